//! The command line: configuration refusals and start-up conflicts, through the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Command, Output};

use common::{BIN, Sidecar, write_whole};

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

    let output = serve_with(
        "backend = \"aws\"\nregion = \"us-east-1\"\n",
        &[(
            "INSPECTOR_KEYD_AWS__INSPECTOR2_ENDPOINT",
            "http://inspector2.us-east-1.amazonaws.com",
        )],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("`aws.inspector2_endpoint` is a plaintext http URL"),
        "{stderr}"
    );
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

const ACCOUNT: &str = "123456789012";
const ROLE: &str = "arn:aws:iam::123456789012:role/Scanner";

fn policy(args: &[&str], dir: &std::path::Path) -> Output {
    Command::new(BIN)
        .arg("policy")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn target(profile: &str) -> Vec<String> {
    [
        "--profile",
        profile,
        "--region",
        "eu-west-1",
        "--account",
        ACCOUNT,
        "--principal-arn",
        ROLE,
    ]
    .map(str::to_owned)
    .to_vec()
}

fn run(dir: &std::path::Path, sub: &str, profile: &str, extra: &[&str]) -> Output {
    let mut args = vec![sub.to_owned()];
    args.extend(target(profile));
    args.extend(extra.iter().map(|s| s.to_string()));
    policy(&args.iter().map(String::as_str).collect::<Vec<_>>(), dir)
}

#[test]
fn policy_render_then_verify_passes_for_every_profile() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("default-key-policy.json"),
        r#"{"Version": "2012-10-17", "Statement": [{"Sid": "Enable IAM User Permissions", "Effect": "Allow",
            "Principal": {"AWS": "arn:aws:iam::123456789012:root"}, "Action": "kms:*", "Resource": "*"}]}"#,
    )
    .unwrap();
    for profile in [
        "codeguru-grants",
        "amazon-q-lambda",
        "amazon-q-code-repository",
    ] {
        let rendered = run(dir.path(), "render", profile, &[]);
        assert_eq!(
            rendered.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&rendered.stderr)
        );
        std::fs::write(dir.path().join("rendered.json"), &rendered.stdout).unwrap();
        let verify_args: &[&str] = if profile == "codeguru-grants" {
            &[
                "--key-policy",
                "default-key-policy.json",
                "--identity-policy",
                "rendered.json",
                "--format",
                "json",
            ]
        } else {
            &["--key-policy", "rendered.json", "--format", "json"]
        };
        let verified = run(dir.path(), "verify", profile, verify_args);
        let stdout = String::from_utf8_lossy(&verified.stdout);
        assert_eq!(verified.status.code(), Some(0), "{profile}: {stdout}");
        let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let keys: Vec<&String> = report.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["passed", "profile", "findings", "access"]);
        assert_eq!(report["passed"], true);
        assert_eq!(report["profile"], profile);
        for finding in report["findings"].as_array().unwrap() {
            for key in finding.as_object().unwrap().keys() {
                assert!(
                    ["code", "severity", "message", "sid", "location", "fix"]
                        .contains(&key.as_str()),
                    "{key}"
                );
            }
            assert!(
                ["ERROR", "SECURITY_WARNING", "WARNING", "SUGGESTION"]
                    .contains(&finding["severity"].as_str().unwrap())
            );
        }
        // Rendering into its own output changes nothing.
        let again = run(
            dir.path(),
            "render",
            profile,
            &["--merge-into", "rendered.json"],
        );
        assert_eq!(
            again.stdout, rendered.stdout,
            "{profile}: render is not idempotent"
        );
    }
}

#[test]
fn policy_verify_reports_findings_with_exit_code_1() {
    let dir = tempfile::tempdir().unwrap();
    // The lambda profile's statements are missing: only the default statement is there.
    std::fs::write(
        dir.path().join("key.json"),
        r#"{"Version": "2012-10-17", "Statement": [{"Sid": "Enable IAM User Permissions", "Effect": "Allow",
            "Principal": {"AWS": "arn:aws:iam::123456789012:root"}, "Action": "kms:*", "Resource": "*"}]}"#,
    )
    .unwrap();
    let output = run(
        dir.path(),
        "verify",
        "amazon-q-lambda",
        &["--key-policy", "key.json"],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    // One diagnostic per cause: the statement Amazon Q's data-key requests need, with the
    // requests it blocks listed and the statement to add as the fix; its describe
    // statement is the second cause.
    let diagnostics: Vec<&str> = stdout.split("\n\n").collect();
    let missing: Vec<&&str> = diagnostics
        .iter()
        .filter(|d| d.starts_with("error[REQUIRED_ACCESS_MISSING]"))
        .collect();
    assert_eq!(missing.len(), 2, "{stdout}");
    assert!(
        missing[0].contains("service `q.amazonaws.com`")
            && missing[0].contains("= note: requests:")
            && missing[0]
                .contains("- kms:Decrypt for arn:aws:qdeveloper:eu-west-1:123456789012:scans/")
            && missing[0].contains("= help: fix: {"),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .last()
            .unwrap()
            .starts_with("FAILED (profile amazon-q-lambda): 2 errors"),
        "{stdout}"
    );
    // Not a terminal: no colour.
    assert!(!stdout.contains('\u{1b}'), "{stdout}");

    // A malformed policy is a finding (exit 1) with its line and column.
    std::fs::write(
        dir.path().join("broken.json"),
        "{\n  \"Version\": \"2012-10-17\",\n  \"Statement\": [,]\n}",
    )
    .unwrap();
    let output = run(
        dir.path(),
        "verify",
        "amazon-q-lambda",
        &["--key-policy", "broken.json", "--format", "json"],
    );
    assert_eq!(output.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let invalid = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == "POLICY_INVALID_JSON")
        .unwrap();
    assert_eq!(invalid["location"]["line"], 3);
    assert_eq!(invalid["location"]["column"], 17);
    // As text: the offending line of the policy, with a caret under the position.
    let output = run(
        dir.path(),
        "verify",
        "amazon-q-lambda",
        &["--key-policy", "broken.json"],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let diagnostic = stdout
        .split("\n\n")
        .find(|d| d.starts_with("error[POLICY_INVALID_JSON]"))
        .unwrap_or_else(|| panic!("{stdout}"));
    let lines: Vec<&str> = diagnostic.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.trim_start() == "--> key_policy:3:17"),
        "{diagnostic}"
    );
    let source = lines
        .iter()
        .position(|l| l.ends_with("|   \"Statement\": [,]"))
        .unwrap_or_else(|| panic!("{diagnostic}"));
    let caret = lines[source + 1];
    assert!(
        caret.ends_with('^') && !caret.ends_with("^^"),
        "{diagnostic}"
    );
    let column_of = |line: &str, c: char| line.find(c).unwrap();
    assert_eq!(
        column_of(caret, '^') - column_of(caret, '|'),
        column_of(lines[source], ',') - column_of(lines[source], '|'),
        "{diagnostic}"
    );

    // Key metadata is checked when given.
    std::fs::write(
        dir.path().join("key-metadata.json"),
        r#"{"KeyMetadata": {"KeyId": "1234abcd-12ab-34cd-56ef-1234567890ab", "Arn": "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "KeyState": "Disabled", "Enabled": false, "KeySpec": "SYMMETRIC_DEFAULT", "KeyUsage": "ENCRYPT_DECRYPT", "KeyManager": "CUSTOMER"}}"#,
    )
    .unwrap();
    let rendered = run(dir.path(), "render", "amazon-q-lambda", &[]);
    std::fs::write(dir.path().join("rendered.json"), &rendered.stdout).unwrap();
    let output = run(
        dir.path(),
        "verify",
        "amazon-q-lambda",
        &[
            "--key-policy",
            "rendered.json",
            "--key-metadata",
            "key-metadata.json",
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.starts_with("error[KEY_NOT_ENABLED]"), "{stdout}");
}

#[test]
fn policy_usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("key.json"), "{}").unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "verify",
                "--profile",
                "strict",
                "--region",
                "eu-west-1",
                "--account",
                ACCOUNT,
                "--principal-arn",
                ROLE,
                "--key-policy",
                "key.json",
            ],
            "invalid value 'strict'",
        ),
        (
            vec![
                "verify",
                "--profile",
                "amazon-q-lambda",
                "--region",
                "eu-west-1",
                "--account",
                ACCOUNT,
                "--principal-arn",
                ROLE,
                "--key-policy",
                "missing.json",
            ],
            "cannot read `missing.json`",
        ),
        (
            vec![
                "verify",
                "--profile",
                "amazon-q-lambda",
                "--region",
                "Region",
                "--account",
                ACCOUNT,
                "--principal-arn",
                ROLE,
                "--key-policy",
                "key.json",
            ],
            "not an AWS Region name",
        ),
        (
            vec![
                "render",
                "--profile",
                "amazon-q-lambda",
                "--region",
                "eu-west-1",
                "--account",
                "account-id",
                "--principal-arn",
                ROLE,
            ],
            "not a 12-digit AWS account id",
        ),
        (
            vec![
                "render",
                "--profile",
                "amazon-q-lambda",
                "--region",
                "eu-west-1",
                "--account",
                ACCOUNT,
                "--principal-arn",
                "role-ARN",
            ],
            "not the ARN of an IAM role",
        ),
        (
            vec![
                "render",
                "--profile",
                "amazon-q-lambda",
                "--region",
                "eu-west-1",
                "--account",
                ACCOUNT,
                "--principal-arn",
                ROLE,
                "--merge-into",
                "missing.json",
            ],
            "cannot read",
        ),
        (
            vec![
                "verify",
                "--profile",
                "amazon-q-lambda",
                "--region",
                "eu-west-1",
                "--account",
                ACCOUNT,
                "--principal-arn",
                ROLE,
                "--key-policy",
                "key.json",
                "--key-metadata",
                "key.json",
            ],
            "not DescribeKey output",
        ),
        (
            vec![
                "verify",
                "--profile",
                "amazon-q-lambda",
                "--region",
                "eu-west-1",
                "--account",
                ACCOUNT,
                "--principal-arn",
                ROLE,
                "--key-policy",
                "key.json",
                "--trusted-account",
                "44445555666",
            ],
            "invalid value '44445555666' for '--trusted-account <ID>': `44445555666` is not a 12-digit AWS account id",
        ),
        (
            vec![
                "verify",
                "--profile",
                "amazon-q-lambda",
                "--region",
                "eu-west-1",
                "--account",
                ACCOUNT,
                "--principal-arn",
                ROLE,
                "--key-policy",
                "key.json",
                "--organization-id",
                "o-ABCDEFGHIJ",
            ],
            "for '--organization-id <ID>': `o-ABCDEFGHIJ` is not an AWS Organizations id",
        ),
        (
            vec![
                "access",
                "--key-policy",
                "key.json",
                "--region",
                "eu-west-1",
                "--account",
                ACCOUNT,
                "--organization-id",
                "o-abc",
            ],
            "for '--organization-id <ID>'",
        ),
        (
            vec![
                "access",
                "--key-policy",
                "key.json",
                "--region",
                "eu-west-1",
                "--account",
                "12345678901x",
            ],
            "for '--account <ID>'",
        ),
        (
            vec![
                "access",
                "--key-policy",
                "key.json",
                "--region",
                "eu-west-1",
                "--account",
                ACCOUNT,
                "--key-arn",
                "arn:aws:kms:eu-west-1:444455556666:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            ],
            "is a key of account 444455556666, not of --account 123456789012",
        ),
        (
            vec![
                "access",
                "--key-policy",
                "key.json",
                "--region",
                "eu-west-1",
                "--account",
                ACCOUNT,
                "--identity-policy",
                "key.json",
            ],
            "--principal-arn",
        ),
        (
            vec![
                "diff",
                "missing.json",
                "key.json",
                "--region",
                "eu-west-1",
                "--account",
                ACCOUNT,
            ],
            "cannot read `missing.json`",
        ),
    ];
    for (args, message) in cases {
        let output = policy(&args, dir.path());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn policy_render_merges_into_an_existing_policy() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("existing.json"),
        r#"{"Version": "2012-10-17", "Id": "prod-key", "Statement": [
            {"Sid": "Admins", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:role/Admin"}, "Action": "kms:*", "Resource": "*"},
            {"Sid": "Allow Q to use DescribeKey", "Effect": "Allow", "Principal": {"Service": "q.amazonaws.com"}, "Action": "kms:DescribeKey", "Resource": "*"}
        ]}"#,
    )
    .unwrap();
    let output = run(
        dir.path(),
        "render",
        "amazon-q-code-repository",
        &["--merge-into", "existing.json"],
    );
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let merged: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(merged["Id"], "prod-key");
    let sids: Vec<&str> = merged["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["Sid"].as_str().unwrap())
        .collect();
    assert_eq!(
        sids,
        [
            "Enable IAM User Permissions",
            "Admins",
            "Allow Q to use DescribeKey",
            "Allow Q to use Encrypt Decrypt GenerateDataKey and GenerateDataKeyWithoutPlaintext",
            "Allow Inspector to use Encrypt Decrypt GenerateDataKey and GenerateDataKeyWithoutPlaintext using FAS",
            "Allow Inspector to use DescribeKey using FAS",
        ]
    );
    // The same-Sid statement was replaced by the profile's (now with a source condition).
    assert_eq!(
        merged["Statement"][2]["Condition"]["StringEquals"]["aws:SourceAccount"],
        ACCOUNT
    );
}

#[test]
fn policy_render_refuses_an_existing_policy_with_a_duplicate_member() {
    let dir = tempfile::tempdir().unwrap();
    let existing = "{\"Version\": \"2012-10-17\", \"Statement\": [\n  {\"Sid\": \"Admins\", \"Effect\": \"Allow\", \"Principal\": {\"AWS\": \"arn:aws:iam::123456789012:role/Admin\"},\n   \"Principal\": {\"AWS\": \"*\"}, \"Action\": \"kms:*\", \"Resource\": \"*\"}]}";
    std::fs::write(dir.path().join("existing.json"), existing).unwrap();
    let output = run(
        dir.path(),
        "render",
        "amazon-q-lambda",
        &["--merge-into", "existing.json"],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "cannot merge into the existing policy: duplicate member `Principal` at line 3, column 4 (first at line 2, column 40)"
        ),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "no policy is printed");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("existing.json")).unwrap(),
        existing
    );
}

fn config_check(config: &str, rules: Option<&str>) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyd.toml");
    std::fs::write(&path, config).unwrap();
    let mut command = Command::new(BIN);
    command.args(["config", "check"]).arg(&path);
    if let Some(rules) = rules {
        let rules_path = dir.path().join("rules.toml");
        std::fs::write(&rules_path, rules).unwrap();
        command.arg("--rules-file").arg(&rules_path);
    }
    let output = command.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), text)
}

#[test]
fn config_check_accepts_a_valid_file_and_names_what_it_could_not_read() {
    let (code, text) = config_check(
        "backend = \"aws\"\nregion = \"eu-west-1\"\n[authz]\nrules_file = \"/nonexistent/rules.toml\"\n[ops]\nhealth_listen = \"0.0.0.0:8086\"\n",
        None,
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("is valid"), "{text}");
    assert!(
        text.contains("`/nonexistent/rules.toml` (authz.rules_file) does not exist here"),
        "{text}"
    );
    // The rules file given on the command line is checked in its place.
    let (code, text) = config_check(
        "[authz]\nrules_file = \"/nonexistent/rules.toml\"\n",
        Some("[[rule]]\nrole = \"read-only\"\nunix_uid = 10002\n"),
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains("does not exist"), "{text}");
}

#[test]
fn config_check_refuses_bad_files_naming_what_is_wrong() {
    for (config, rules, expected) in [
        (
            "[ops]\nhealth_listen = \"everywhere\"\n",
            None,
            "`ops.health_listen`",
        ),
        (
            "[listen]\ntcp = \"0.0.0.0:50051\"\n",
            None,
            "not a loopback address",
        ),
        ("[cache]\nttl = \"1s\"\n", None, "unknown field `ttl`"),
        (
            "backend = \"aws\"\n[aws]\nkms_endpoint = \"http://kms.eu-west-1.amazonaws.com\"\n",
            None,
            "`aws.kms_endpoint` is a plaintext http URL to `kms.eu-west-1.amazonaws.com`, which is not a loopback address: use https",
        ),
        (
            "[aws]\nsts_endpoint = \"sts.amazonaws.com\"\n",
            None,
            "`aws.sts_endpoint` is not a URL",
        ),
        (
            "",
            Some("[[rule]]\nrole = \"owner\"\nunix_uid = 1\n"),
            "rules file",
        ),
        (
            "[tls]\nlisten = \"0.0.0.0:50443\"\ncert_file = \"Cargo.toml\"\nkey_file = \"Cargo.toml\"\nallow_token_only = true\n",
            None,
            "holds no certificate",
        ),
    ] {
        let (code, text) = config_check(config, rules);
        assert_eq!(code, Some(1), "{config}: {text}");
        assert!(text.contains(expected), "{config}: {text}");
        assert!(!text.contains("is valid"), "{text}");
    }
}

#[test]
fn config_check_refuses_an_identity_policy_or_boundary_with_a_duplicate_member() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("identity.json");
    std::fs::write(
        &policy,
        "{\"Version\": \"2012-10-17\",\n \"Statement\": {\"Effect\": \"Allow\", \"Action\": \"kms:Decrypt\",\n  \"Action\": \"kms:*\", \"Resource\": \"*\"}}",
    )
    .unwrap();
    let path = policy.display().to_string();
    for (setting, what) in [
        (
            format!("identity_policy_files = [{path:?}]"),
            "identity policy",
        ),
        (
            format!("permissions_boundary_file = {path:?}"),
            "permissions boundary",
        ),
    ] {
        let (code, text) = config_check(&format!("[verification]\n{setting}\n"), None);
        assert_eq!(code, Some(1), "{text}");
        assert!(
            text.contains(&format!(
                "{what} `{path}`: duplicate member `Action` at line 3, column 3 (first at line 2, column 35)"
            )),
            "{text}"
        );
        assert!(!text.contains("is valid"), "{text}");
    }
}

#[test]
fn policy_verify_reads_a_permissions_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let rendered = run(dir.path(), "render", "amazon-q-lambda", &[]);
    std::fs::write(dir.path().join("key.json"), &rendered.stdout).unwrap();
    std::fs::write(
        dir.path().join("boundary.json"),
        r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "NotAction": "kms:GenerateDataKey", "Resource": "*"}]}"#,
    )
    .unwrap();
    let verify = |format: &[&str]| {
        let mut args = vec![
            "--key-policy",
            "key.json",
            "--permissions-boundary",
            "boundary.json",
        ];
        args.extend(format);
        run(dir.path(), "verify", "amazon-q-lambda", &args)
    };
    let verified = verify(&["--format", "json"]);
    assert_eq!(verified.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&verified.stdout).unwrap();
    let errors: Vec<&serde_json::Value> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] == "ERROR")
        .collect();
    assert_eq!(errors.len(), 1, "{report:#}");
    assert_eq!(errors[0]["code"], "REQUIRED_ACCESS_MISSING");
    assert_eq!(errors[0]["location"]["path"], "permissions_boundary");
    assert!(
        errors[0]["message"]
            .as_str()
            .unwrap()
            .contains("permissions boundary"),
        "{report:#}"
    );
    assert_eq!(
        errors[0]["requests"],
        serde_json::json!(["kms:GenerateDataKey via inspector2.eu-west-1.amazonaws.com"]),
        "{report:#}"
    );

    // As text, the finding shows the boundary's line, as it does a key policy's.
    let text = verify(&[]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("--> permissions_boundary:1:"), "{text}");
    assert!(
        text.contains(r#""NotAction": "kms:GenerateDataKey""#),
        "{text}"
    );
    assert!(!text.contains("at permissions_boundary (line"), "{text}");

    // A boundary that cannot be read is a usage error.
    let missing = run(
        dir.path(),
        "verify",
        "amazon-q-lambda",
        &[
            "--key-policy",
            "key.json",
            "--permissions-boundary",
            "nope.json",
        ],
    );
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read `nope.json`"));
}

/// Runs `serve` with `config` for at most 20 s (killed then, as a server that started when
/// it should have refused): its exit code and stderr.
fn serve_bounded(config: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyd.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .current_dir(dir.path())
        .env("INSPECTOR_KEYD_OPS__METRICS_LISTEN", "")
        .env("INSPECTOR_KEYD_AWS_API__LISTEN", "")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_file_at_the_socket_path_is_left_as_it_is_and_nothing_starts() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keyd.sock");
    std::fs::write(&file, "not a socket\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let link = dir.path().join("link.sock");
    let target = dir.path().join("target.txt");
    std::fs::write(&target, "pointed at\n").unwrap();
    std::os::unix::fs::symlink(&target, &link).unwrap();
    for (path, what) in [(&file, "a regular file"), (&link, "a symbolic link")] {
        let (code, stderr) = serve_bounded(&format!(
            "state_dir = {:?}\n[listen]\nunix_socket = {path:?}\ntcp = \"127.0.0.1:0\"\n",
            dir.path().join("state")
        ));
        assert_eq!(code, Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!("unix socket `{}`", path.display())),
            "{stderr}"
        );
        assert!(
            stderr.contains(&format!("is not a socket ({what})")),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // Both untouched: the file with its content and mode, the link and what it points at.
    let metadata = std::fs::symlink_metadata(&file).unwrap();
    assert!(metadata.is_file());
    assert_eq!(metadata.permissions().mode() & 0o777, 0o640);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "not a socket\n");
    assert_eq!(std::fs::read_link(&link).unwrap(), target);
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "pointed at\n");
    // Nothing left beside them (no temporary directory of the bind).
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["keyd.sock", "link.sock", "state", "target.txt"]);
}

#[tokio::test]
async fn the_socket_has_the_configured_mode_also_when_it_replaces_a_stale_one() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let env = [("INSPECTOR_KEYD_LISTEN__UNIX_SOCKET_MODE", "0600")];
    let mut sidecar = Sidecar::start_with_env("", &env);
    let mode = |path: &std::path::Path| {
        let metadata = std::fs::symlink_metadata(path).unwrap();
        assert!(metadata.file_type().is_socket());
        metadata.permissions().mode() & 0o777
    };
    assert_eq!(mode(&sidecar.socket), 0o600);
    // It serves on it (an admin call: the Unix socket's caller is this test's uid).
    sidecar
        .create_key(inspector_keyd::proto::CreateKeyRequest::default())
        .await;
    // Killed: its socket stays behind, stale. Loosened, it is replaced at the next start.
    sidecar.kill_9();
    std::fs::set_permissions(&sidecar.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let sidecar = sidecar.restart();
    assert_eq!(mode(&sidecar.socket), 0o600);
    let arn = sidecar
        .create_key(inspector_keyd::proto::CreateKeyRequest::default())
        .await;
    assert!(arn.starts_with("arn:aws:kms:"), "{arn}");
    // No temporary directory of the bind is left beside the socket.
    let leftovers: Vec<_> = std::fs::read_dir(sidecar.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// The Amazon Q Lambda profile's key policy, as `policy render` prints it, parsed.
fn rendered_lambda_policy(dir: &std::path::Path) -> serde_json::Value {
    let rendered = run(dir, "render", "amazon-q-lambda", &[]);
    assert_eq!(
        rendered.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    serde_json::from_slice(&rendered.stdout).unwrap()
}

/// The policy with `statement` added at the end.
fn with_statement(policy: &serde_json::Value, statement: serde_json::Value) -> serde_json::Value {
    let mut policy = policy.clone();
    policy["Statement"].as_array_mut().unwrap().push(statement);
    policy
}

fn write_json(dir: &std::path::Path, name: &str, value: &serde_json::Value) {
    std::fs::write(dir.join(name), serde_json::to_string_pretty(value).unwrap()).unwrap();
}

/// `policy <sub> <args> --account ACCOUNT --region eu-west-1`.
fn for_the_key(dir: &std::path::Path, sub: &str, args: &[&str]) -> Output {
    let mut all = vec![sub];
    all.extend(args);
    all.extend(["--account", ACCOUNT, "--region", "eu-west-1"]);
    policy(&all, dir)
}

/// stdout as text, and the exit code checked against `code` (showing stdout and stderr).
fn stdout_with_code(output: &Output, code: i32) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The lines of a text summary under `heading`, up to the next blank line.
fn section<'a>(text: &'a str, heading: &str) -> Vec<&'a str> {
    text.lines()
        .skip_while(|l| *l != heading)
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect()
}

/// The statement that lets another account decrypt with the key.
fn partner_statement() -> serde_json::Value {
    serde_json::json!({
        "Sid": "Partner", "Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::444455556666:root"},
        "Action": "kms:Decrypt", "Resource": "*"
    })
}

#[test]
fn policy_access_lists_who_reads_the_code_and_who_breaks_scanning() {
    let dir = tempfile::tempdir().unwrap();
    write_json(dir.path(), "key.json", &rendered_lambda_policy(dir.path()));

    let output = for_the_key(dir.path(), "access", &["--key-policy", "key.json"]);
    let text = stdout_with_code(&output, 0);
    let reads = section(&text, "Reads the code");
    let breaks = section(&text, "Breaks scanning");
    let entry = |lines: &[&str], who: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(&format!("  {who}")))
            .unwrap_or_else(|| panic!("no entry for {who}:\n{text}"))
    };
    // Each entry is one line, its witness the next.
    for who in [
        "service q.amazonaws.com",
        ROLE,
        "IAM principals of 123456789012",
    ] {
        let at = entry(&reads, who);
        assert!(reads[at].contains("kms:Decrypt"), "{text}");
        assert!(
            reads[at + 1].trim_start().starts_with("witness: "),
            "{text}"
        );
    }
    // The service's entry shows its conditions and its statement.
    let service = reads[entry(&reads, "service q.amazonaws.com")];
    assert!(
        service.contains("StringEquals") && service.contains("aws:SourceAccount"),
        "{service}"
    );
    assert!(
        service.contains("Sid \"Allow Amazon Q to encrypt and decrypt Lambda code snippets\""),
        "{service}"
    );
    assert!(service.contains("line "), "{service}");
    // The account's administrators may also break scanning; the role and the service not.
    let account = breaks[entry(&breaks, "IAM principals of 123456789012")];
    assert!(account.contains("kms:ScheduleKeyDeletion"), "{text}");
    assert!(!account.contains("kms:Decrypt"), "{text}");
    assert!(
        !breaks
            .iter()
            .any(|l| l.starts_with("  service ") || l.starts_with(&format!("  {ROLE}"))),
        "{text}"
    );
    assert!(
        !text.contains("[external]") && !text.contains("[public]"),
        "{text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "not a terminal: no colour\n{text}"
    );
    assert!(
        text.lines()
            .last()
            .unwrap()
            .starts_with("no external or public access: "),
        "{text}"
    );

    let output = for_the_key(
        dir.path(),
        "access",
        &["--key-policy", "key.json", "--format", "json"],
    );
    let summary: serde_json::Value = serde_json::from_str(&stdout_with_code(&output, 0)).unwrap();
    assert_eq!(summary["external"], false, "{summary:#}");
    assert_eq!(summary["public"], false, "{summary:#}");
    let entries = summary["entries"].as_array().unwrap();
    assert!(
        entries.iter().any(|e| e["grantee"]
            == serde_json::json!({"kind": "service", "service": "q.amazonaws.com"})
            && e["reads_code"] == true),
        "{summary:#}"
    );
    assert!(
        entries
            .iter()
            .any(|e| e["grantee"] == serde_json::json!({"kind": "principal", "arn": ROLE})),
        "{summary:#}"
    );
    for entry in entries {
        assert_eq!(entry["external"], false, "{entry:#}");
        assert!(entry["witness"]["action"].is_string(), "{entry:#}");
    }
}

#[test]
fn policy_access_reports_another_account_as_external_unless_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let policy = with_statement(&rendered_lambda_policy(dir.path()), partner_statement());
    write_json(dir.path(), "key.json", &policy);

    let output = for_the_key(dir.path(), "access", &["--key-policy", "key.json"]);
    let text = stdout_with_code(&output, 1);
    let partner = text
        .lines()
        .find(|l| l.contains("444455556666") && l.contains("Sid \"Partner\""))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(partner.contains("kms:Decrypt"), "{text}");
    assert!(partner.ends_with("[external]"), "{text}");
    assert!(
        text.lines()
            .last()
            .unwrap()
            .starts_with("EXTERNAL ACCESS: "),
        "{text}"
    );

    let output = for_the_key(
        dir.path(),
        "access",
        &["--key-policy", "key.json", "--format", "json"],
    );
    let summary: serde_json::Value = serde_json::from_str(&stdout_with_code(&output, 1)).unwrap();
    assert_eq!(summary["external"], true, "{summary:#}");
    assert_eq!(summary["public"], false, "{summary:#}");
    let external: Vec<&serde_json::Value> = summary["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["external"] == true)
        .collect();
    assert_eq!(external.len(), 1, "{summary:#}");
    assert_eq!(external[0]["sid"], "Partner");
    assert_eq!(external[0]["actions"], serde_json::json!(["kms:Decrypt"]));
    assert_eq!(external[0]["witness"]["action"], "kms:Decrypt");
    assert_eq!(external[0]["witness"]["account"], "444455556666");

    // Trusted, the account is inside.
    let output = for_the_key(
        dir.path(),
        "access",
        &[
            "--key-policy",
            "key.json",
            "--trusted-account",
            "444455556666",
            "--format",
            "json",
        ],
    );
    let summary: serde_json::Value = serde_json::from_str(&stdout_with_code(&output, 0)).unwrap();
    assert_eq!(summary["external"], false, "{summary:#}");
    assert!(
        summary["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["sid"] == "Partner"),
        "still listed: {summary:#}"
    );
}

#[test]
fn policy_access_reports_anyone_pinned_only_by_source_ip_as_public() {
    let dir = tempfile::tempdir().unwrap();
    let policy = with_statement(
        &rendered_lambda_policy(dir.path()),
        serde_json::json!({
            "Sid": "FromTheOffice", "Effect": "Allow", "Principal": "*",
            "Action": "kms:Decrypt", "Resource": "*",
            "Condition": {"IpAddress": {"aws:SourceIp": "203.0.113.0/24"}}
        }),
    );
    write_json(dir.path(), "key.json", &policy);

    let output = for_the_key(dir.path(), "access", &["--key-policy", "key.json"]);
    let text = stdout_with_code(&output, 1);
    let anyone = text
        .lines()
        .find(|l| l.starts_with("  anyone") && l.contains("Sid \"FromTheOffice\""))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(anyone.contains("aws:SourceIp"), "{text}");
    assert!(anyone.contains("[public]"), "{text}");
    assert!(
        text.lines().last().unwrap().starts_with("PUBLIC ACCESS: "),
        "{text}"
    );

    let output = for_the_key(
        dir.path(),
        "access",
        &["--key-policy", "key.json", "--format", "json"],
    );
    let summary: serde_json::Value = serde_json::from_str(&stdout_with_code(&output, 1)).unwrap();
    assert_eq!(summary["public"], true, "{summary:#}");
    assert_eq!(summary["external"], true, "{summary:#}");
}

#[test]
fn policy_access_and_diff_refuse_a_policy_that_does_not_parse() {
    let dir = tempfile::tempdir().unwrap();
    write_json(dir.path(), "key.json", &rendered_lambda_policy(dir.path()));
    std::fs::write(
        dir.path().join("broken.json"),
        "{\n  \"Version\": \"2012-10-17\",\n  \"Statement\": [,]\n}",
    )
    .unwrap();
    for args in [
        vec!["access", "--key-policy", "broken.json"],
        vec!["diff", "key.json", "broken.json"],
    ] {
        let output = for_the_key(dir.path(), args[0], &args[1..]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{args:?}");
        assert!(stderr.contains("error[POLICY_INVALID_JSON]"), "{stderr}");
        assert!(
            stderr.contains("`broken.json`") && stderr.contains("is not a usable key policy"),
            "{stderr}"
        );
        assert!(!stderr.contains('\u{1b}'), "{stderr}");
    }
    // An identity policy with a Sid IAM refuses is an error in it.
    std::fs::write(
        dir.path().join("identity.json"),
        r#"{"Version": "2012-10-17", "Statement": [{"Sid": "not alphanumeric", "Effect": "Allow", "Action": "kms:Decrypt", "Resource": "*"}]}"#,
    )
    .unwrap();
    let output = for_the_key(
        dir.path(),
        "access",
        &[
            "--key-policy",
            "key.json",
            "--principal-arn",
            ROLE,
            "--identity-policy",
            "identity.json",
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("error[INVALID_SID]"), "{stderr}");
    assert!(
        stderr.contains("`identity.json` (identity_policies[0]) is not a usable identity policy"),
        "{stderr}"
    );
}

#[test]
fn policy_diff_reports_only_the_access_a_change_adds() {
    let dir = tempfile::tempdir().unwrap();
    let policy = rendered_lambda_policy(dir.path());
    write_json(dir.path(), "old.json", &policy);
    // The same statements in another order add nothing.
    let mut reordered = policy.clone();
    reordered["Statement"].as_array_mut().unwrap().reverse();
    write_json(dir.path(), "reordered.json", &reordered);
    let output = for_the_key(
        dir.path(),
        "diff",
        &["old.json", "reordered.json", "--format", "json"],
    );
    let diff: serde_json::Value = serde_json::from_str(&stdout_with_code(&output, 0)).unwrap();
    assert_eq!(diff["new_access"], serde_json::json!([]), "{diff:#}");
    assert_eq!(diff["removed_access"], serde_json::json!([]), "{diff:#}");
    let output = for_the_key(dir.path(), "diff", &["old.json", "reordered.json"]);
    let text = stdout_with_code(&output, 0);
    assert!(
        text.lines()
            .last()
            .unwrap()
            .starts_with("no new access: 0 new, 0 removed"),
        "{text}"
    );

    // kms:ViaService from StringEquals to StringLike "*": the role may decrypt through any
    // service, not only Inspector.
    let mut widened = policy.clone();
    let statements = widened["Statement"].as_array_mut().unwrap();
    let fas = statements
        .iter_mut()
        .find(|s| {
            s["Sid"] == "Allow Inspector to encrypt and decrypt Lambda code snippets using FAS"
        })
        .unwrap();
    let condition = fas["Condition"].as_object_mut().unwrap();
    let equals = condition["StringEquals"].as_object_mut().unwrap();
    equals.remove("kms:ViaService").unwrap();
    assert!(equals.is_empty());
    condition.remove("StringEquals");
    condition["StringLike"]
        .as_object_mut()
        .unwrap()
        .insert("kms:ViaService".into(), "*".into());
    write_json(dir.path(), "new.json", &widened);
    let output = for_the_key(
        dir.path(),
        "diff",
        &["old.json", "new.json", "--format", "json"],
    );
    let diff: serde_json::Value = serde_json::from_str(&stdout_with_code(&output, 1)).unwrap();
    let new_access = diff["new_access"].as_array().unwrap();
    assert!(!new_access.is_empty(), "{diff:#}");
    for entry in new_access {
        assert_eq!(
            entry["grantee"],
            serde_json::json!({"kind": "principal", "arn": ROLE}),
            "{diff:#}"
        );
        assert_eq!(
            entry["sid"],
            "Allow Inspector to encrypt and decrypt Lambda code snippets using FAS"
        );
        // The witness goes through some other service than Inspector.
        let via = entry["witness"]["context"]
            .as_object()
            .unwrap()
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("kms:ViaService"))
            .map(|(_, v)| v.clone());
        assert_ne!(
            via,
            Some(serde_json::json!(["inspector2.eu-west-1.amazonaws.com"])),
            "{diff:#}"
        );
    }
    assert_eq!(diff["removed_access"], serde_json::json!([]), "{diff:#}");
    let output = for_the_key(dir.path(), "diff", &["old.json", "new.json"]);
    let text = stdout_with_code(&output, 1);
    let new = section(&text, "New access (allowed by new.json, not by old.json)");
    assert!(
        new.first()
            .is_some_and(|l| l.starts_with(&format!("  {ROLE}:"))),
        "{text}"
    );
    assert!(
        new.get(1)
            .is_some_and(|l| l.trim_start().starts_with("witness: ")),
        "{text}"
    );
    assert!(
        text.lines().last().unwrap().starts_with("NEW ACCESS: "),
        "{text}"
    );
}

#[test]
fn policy_verify_reports_external_access_as_an_error_when_told_to() {
    let dir = tempfile::tempdir().unwrap();
    let policy = with_statement(&rendered_lambda_policy(dir.path()), partner_statement());
    write_json(dir.path(), "key.json", &policy);
    let verify = |extra: &[&str]| {
        let mut args = vec!["--key-policy", "key.json", "--format", "json"];
        args.extend(extra);
        let output = run(dir.path(), "verify", "amazon-q-lambda", &args);
        let report: serde_json::Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stderr)));
        let external: Vec<String> = report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["code"] == "EXTERNAL_ACCESS")
            .map(|f| f["severity"].as_str().unwrap().to_owned())
            .collect();
        (output.status.code(), external)
    };
    assert_eq!(verify(&[]), (Some(0), vec!["SECURITY_WARNING".to_owned()]));
    assert_eq!(
        verify(&["--deny-external-access"]),
        (Some(1), vec!["ERROR".to_owned()])
    );
    assert_eq!(
        verify(&[
            "--deny-external-access",
            "--trusted-account",
            "444455556666"
        ]),
        (Some(0), vec![])
    );
}

#[test]
fn config_check_refuses_a_desired_state_that_does_not_parse() {
    let dir = tempfile::tempdir().unwrap();
    let desired = dir.path().join("desired.toml");
    write_whole(
        &desired,
        "[[key]]\naccounts = [\"*\"]\nregions = [\"*\"]\nresource_type = \"AWS_LAMBDA_FUNCTION\"\nkms_key = \"inspector-code\"\n",
        0o600,
    );
    let (code, text) = config_check(
        &format!("[fleet]\ndesired_state_file = {desired:?}\n"),
        None,
    );
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("fleet.desired_state_file") && text.contains("line 5"),
        "{text}"
    );
}
