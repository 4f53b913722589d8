//! The conformance corpus: JSON cases under tests/conformance/, each citing the documented
//! AWS rule it checks. A case is either a single request decided against policies
//! (`request` + `expect_decision`) or a profile verification (`profile` + `expect_codes`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use inspector_keyd::verify::{
    self, KeyMetadata, Profile,
    eval::{Caller, Decision, Request, decide_bounded},
    policy::{Document, DocumentKind, analyze},
};
use serde::Deserialize;
use serde_json::Value;

const REGION: &str = "us-east-1";
const ACCOUNT: &str = "111122223333";
const PRINCIPAL: &str = "arn:aws:iam::111122223333:role/inspector-keyd";
const KEY_ARN: &str = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    /// The documented rule the case checks, with its source.
    rule: String,
    /// A JSON document, or a string holding the raw text (for malformed documents).
    key_policy: Value,
    /// Identity policies of the principal; absent means none were supplied.
    identity_policies: Option<Vec<Value>>,
    /// The principal's permissions boundary; absent means it has none.
    permissions_boundary: Option<Value>,

    request: Option<RequestSpec>,
    /// allow | explicit_deny | implicit_deny | identity_policy_not_checked
    expect_decision: Option<String>,
    /// For explicit_deny: the Sid of the denying statement.
    expect_deny_sid: Option<String>,

    profile: Option<String>,
    region: Option<String>,
    account: Option<String>,
    principal_arn: Option<String>,
    /// DescribeKey metadata; a good key in us-east-1 when absent.
    key_metadata: Option<Value>,
    /// Verify without key metadata.
    #[serde(default)]
    no_key_metadata: bool,
    /// Every finding code the report must have, each as often as listed (order ignored).
    expect_codes: Option<Vec<String>>,
    expect_passed: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestSpec {
    /// An IAM principal ARN (its account is read from the ARN) ...
    principal: Option<String>,
    /// ... or a service principal such as q.amazonaws.com.
    service: Option<String>,
    action: String,
    resource: Option<String>,
    /// Context keys to a string or an array of strings.
    #[serde(default)]
    context: BTreeMap<String, Value>,
}

fn text(document: &Value) -> String {
    match document {
        Value::String(raw) => raw.clone(),
        other => serde_json::to_string_pretty(other).unwrap(),
    }
}

fn good_key() -> KeyMetadata {
    KeyMetadata {
        aws_account_id: ACCOUNT.into(),
        key_id: "1234abcd-12ab-34cd-56ef-1234567890ab".into(),
        arn: KEY_ARN.into(),
        enabled: true,
        key_usage: "ENCRYPT_DECRYPT".into(),
        key_state: "Enabled".into(),
        origin: "AWS_KMS".into(),
        key_manager: "CUSTOMER".into(),
        key_spec: "SYMMETRIC_DEFAULT".into(),
        ..KeyMetadata::default()
    }
}

fn run_decision(case: &Case, spec: &RequestSpec) -> Result<(), String> {
    let key_text = text(&case.key_policy);
    let (key_policy, findings) = analyze(Document {
        kind: DocumentKind::KeyPolicy,
        name: "key_policy",
        text: &key_text,
    });
    let key_policy = key_policy.ok_or_else(|| format!("key policy unusable: {findings:?}"))?;
    let identity: Option<Vec<_>> = case.identity_policies.as_ref().map(|docs| {
        docs.iter()
            .map(|d| {
                let t = text(d);
                analyze(Document {
                    kind: DocumentKind::IdentityPolicy,
                    name: "identity_policies[0]",
                    text: &t,
                })
                .0
                .expect("identity policy usable")
            })
            .collect()
    });
    let boundary = case.permissions_boundary.as_ref().map(|b| {
        let t = text(b);
        analyze(Document {
            kind: DocumentKind::IdentityPolicy,
            name: "permissions_boundary",
            text: &t,
        })
        .0
        .expect("permissions boundary usable")
    });
    let caller = match (&spec.principal, &spec.service) {
        (Some(arn), None) => Caller::Aws {
            arn: arn.clone(),
            account: arn.split(':').nth(4).unwrap_or_default().to_owned(),
        },
        (None, Some(service)) => Caller::Service(service.clone()),
        _ => return Err("request needs exactly one of principal and service".into()),
    };
    let context = spec
        .context
        .iter()
        .map(|(k, v)| {
            let values = match v {
                Value::Array(items) => items
                    .iter()
                    .map(|i| i.as_str().unwrap().to_owned())
                    .collect(),
                Value::String(s) => vec![s.clone()],
                other => panic!("context value {other}"),
            };
            (k.clone(), values)
        })
        .collect();
    let request = Request {
        caller,
        action: spec.action.clone(),
        resource: spec.resource.clone().unwrap_or_else(|| KEY_ARN.into()),
        context,
    };
    let decision = decide_bounded(
        &key_policy,
        identity.as_deref(),
        boundary.as_ref(),
        &request,
    );
    let (name, sid) = match &decision {
        Decision::Allow => ("allow", None),
        Decision::ExplicitDeny { sid, .. } => ("explicit_deny", sid.clone()),
        Decision::ImplicitDeny => ("implicit_deny", None),
        Decision::IdentityPolicyNotChecked => ("identity_policy_not_checked", None),
    };
    let expected = case
        .expect_decision
        .as_deref()
        .ok_or("request case without expect_decision")?;
    if name != expected {
        return Err(format!("decision {name}, expected {expected}"));
    }
    if case.expect_deny_sid.is_some() && sid != case.expect_deny_sid {
        return Err(format!(
            "denied by {sid:?}, expected {:?}",
            case.expect_deny_sid
        ));
    }
    Ok(())
}

fn run_profile(case: &Case, profile: &str) -> Result<(), String> {
    let profile = Profile::parse(profile).ok_or_else(|| format!("unknown profile {profile}"))?;
    let metadata = match &case.key_metadata {
        Some(value) => {
            Some(serde_json::from_value::<KeyMetadata>(value.clone()).map_err(|e| e.to_string())?)
        }
        None if case.no_key_metadata => None,
        None => Some(good_key()),
    };
    let identity: Vec<String> = case.identity_policies.iter().flatten().map(text).collect();
    let boundary = case.permissions_boundary.as_ref().map(text);
    let key_policy = text(&case.key_policy);
    let report = verify::verify(&verify::Input {
        profile,
        region: case.region.as_deref().unwrap_or(REGION),
        account_id: case.account.as_deref().unwrap_or(ACCOUNT),
        principal_arn: case.principal_arn.as_deref().unwrap_or(PRINCIPAL),
        key_metadata: metadata.as_ref(),
        key_policy: &key_policy,
        identity_policies: &identity,
        identity_policies_complete: case.identity_policies.is_some(),
        permissions_boundary: boundary.as_deref(),
        trust: verify::access::Trust::default(),
    });
    let mut got: Vec<&str> = report.findings.iter().map(|f| f.code.as_str()).collect();
    got.sort_unstable();
    if let Some(expected) = &case.expect_codes {
        let mut expected: Vec<&str> = expected.iter().map(String::as_str).collect();
        expected.sort_unstable();
        if got != expected {
            let details: Vec<String> = report
                .findings
                .iter()
                .map(|f| format!("{}: {}", f.code, f.message))
                .collect();
            return Err(format!(
                "codes {got:?}, expected {expected:?}\n    {}",
                details.join("\n    ")
            ));
        }
    }
    if let Some(passed) = case.expect_passed
        && report.passed != passed
    {
        return Err(format!("passed = {}, expected {passed}", report.passed));
    }
    Ok(())
}

#[test]
fn conformance_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut total = 0;
    let mut failures = Vec::new();
    for file in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "json"))
    {
        let text = std::fs::read_to_string(file).unwrap();
        let cases: Vec<Case> =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for case in cases {
            total += 1;
            assert!(
                !case.rule.trim().is_empty(),
                "{}: case without a rule",
                case.name
            );
            let result = match (&case.request, &case.profile) {
                (Some(spec), None) => run_decision(&case, spec),
                (None, Some(profile)) => run_profile(&case, profile),
                _ => Err("a case needs exactly one of request and profile".into()),
            };
            if let Err(e) = result {
                failures.push(format!(
                    "{} / {}: {e}",
                    file.file_name().unwrap().to_string_lossy(),
                    case.name
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        total >= 60,
        "the corpus has {total} cases; it should have at least 60"
    );
}
