//! What each fuzz target does with an input, shared by `fuzz_targets/*.rs` and by
//! `tests/fuzz_regressions.rs`, which replays every input a fuzzer ever crashed on.

use std::path::Path;

use inspector_keyd::{
    aws_api::{protocol, sigv4},
    config::Settings,
    proto,
    service::validation,
    verify::{
        self, Profile, Severity,
        access::{self, AccessSummary, BREAKS_SCANNING, READS_CODE, Subject},
        eval::{self, Caller, Decision},
        policy::{self, Document, DocumentKind, Policy},
    },
};
use prost::Message;

const PROFILES: [Profile; 3] = [
    Profile::CodeguruGrants,
    Profile::AmazonQLambda,
    Profile::AmazonQCodeRepository,
];

/// The policy parser, evaluator, access summary and renderer. Input: a profile selector
/// byte, then the key policy, an identity policy, a DescribeKey document and a permissions
/// boundary separated by NUL bytes.
pub fn policy(data: &[u8]) {
    policy_checks(data, true);
}

/// As [`policy`]; `profile_free: false` leaves out the access analyses the profile selector
/// does not change (a second summary and the diff), so a replay running one policy under
/// every profile makes them once.
pub fn policy_checks(data: &[u8], profile_free: bool) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let profile = PROFILES[usize::from(selector) % PROFILES.len()];
    let mut parts = rest.split(|b| *b == 0).map(String::from_utf8_lossy);
    let key_policy = parts.next().unwrap_or_default();
    let identity_policies: Vec<String> = parts.next().map(|p| p.into_owned()).into_iter().collect();
    let metadata = parts
        .next()
        .and_then(|text| verify::parse_describe_key(&text).ok());
    let permissions_boundary = parts.next();
    let principal = "arn:aws:iam::111122223333:role/inspector-keyd";
    let report = verify::verify(&verify::Input {
        profile,
        region: "us-east-1",
        account_id: "111122223333",
        principal_arn: principal,
        key_metadata: metadata.as_ref(),
        key_policy: &key_policy,
        identity_policies: &identity_policies,
        identity_policies_complete: false,
        permissions_boundary: permissions_boundary.as_deref(),
        trust: verify::access::Trust::default(),
    });
    // A failed verification always says why.
    assert!(
        report.passed
            || report
                .findings
                .iter()
                .any(|f| f.severity == Severity::Error)
    );
    // The access summary verify made of the key policy (`access::summarize`, for the
    // principal with the identity policies and boundary as given) holds up, so does one for
    // nobody's known policies and other trust, and the access diff (`access::diff`) of the
    // policy against itself finds nothing. All are bounded: none may panic or hang.
    if let Some(summary) = &report.access {
        let key_arn = metadata.as_ref().map_or(
            "arn:aws:kms:us-east-1:111122223333:key/00000000-0000-0000-0000-000000000000",
            |m| m.arn.as_str(),
        );
        access_checks(
            summary,
            &key_policy,
            &identity_policies,
            permissions_boundary.as_deref(),
            principal,
            key_arn,
            profile_free,
        );
    }
    // Merging into whatever the input was either refuses it or yields a policy that parses.
    if let Ok(merged) = verify::render(
        profile,
        "us-east-1",
        "111122223333",
        principal,
        Some(&key_policy),
    ) {
        let again = verify::render(
            profile,
            "us-east-1",
            "111122223333",
            principal,
            Some(&merged),
        );
        assert_eq!(
            again.ok().as_deref(),
            Some(merged.as_str()),
            "merging is not idempotent"
        );
    }
}

fn parse(kind: DocumentKind, name: &str, text: &str) -> Option<Policy> {
    policy::analyze(Document { kind, name, text }).0
}

/// What holds of every entry of an access summary of `key_policy`: its actions say whether
/// it reads the code or breaks scanning, public access is external access, and its witness
/// is a request the entry stands for that the whole policy allows (`own`: the identity
/// policies and boundary of the witness's caller, as the summary had them).
fn entry_checks<'p>(
    summary: &AccessSummary,
    key_policy: &Policy,
    own: impl Fn(&Caller) -> (Option<&'p [Policy]>, Option<&'p Policy>),
) {
    for entry in &summary.entries {
        assert!(!entry.actions.is_empty(), "{entry:#?}");
        let listed = |actions: &[&str]| entry.actions.iter().any(|a| actions.contains(&a.as_str()));
        assert_eq!(entry.reads_code, listed(&READS_CODE), "{entry:#?}");
        assert_eq!(
            entry.breaks_scanning,
            listed(&BREAKS_SCANNING),
            "{entry:#?}"
        );
        assert!(
            entry.external || !entry.public,
            "public but not external: {entry:#?}"
        );
        let request = &entry.witness.request;
        let (identity, boundary) = own(&request.caller);
        let decision = eval::decide_bounded(key_policy, identity, boundary, request);
        assert!(
            matches!(
                decision,
                Decision::Allow | Decision::IdentityPolicyNotChecked
            ),
            "the witness is not allowed ({decision:?}): {entry:#?}"
        );
        // A statement with policy variables is reported incomplete; `covers` reads its
        // values as written.
        let statement = &key_policy.statements[entry.statement];
        if !statement.resource_variables && !statement.conditions.iter().any(|c| c.variables) {
            assert!(
                entry.covers(key_policy, request),
                "the entry does not cover its own witness: {entry:#?}"
            );
        }
    }
}

/// The checks of [`entry_checks`] on verify's summary and, with `profile_free`, on a summary
/// for nobody's known policies with another account and an organization trusted; and a
/// policy grants no more and no less access than itself with its statements reversed.
fn access_checks(
    summary: &AccessSummary,
    key_policy: &str,
    identity_policies: &[String],
    permissions_boundary: Option<&str>,
    principal: &str,
    key_arn: &str,
    profile_free: bool,
) {
    let key_policy = parse(DocumentKind::KeyPolicy, "key_policy", key_policy)
        .expect("a summary was made, so the key policy parsed");
    // As verify gives them to the summary: supplied (even if none parsed) or not known.
    let identity: Vec<Policy> = identity_policies
        .iter()
        .filter_map(|text| parse(DocumentKind::IdentityPolicy, "identity_policies[0]", text))
        .collect();
    let supplied = (!identity_policies.is_empty()).then_some(identity.as_slice());
    let boundary = permissions_boundary
        .and_then(|text| parse(DocumentKind::IdentityPolicy, "permissions_boundary", text));
    entry_checks(summary, &key_policy, |caller| match caller {
        Caller::Aws { arn, .. } if arn == principal => (supplied, boundary.as_ref()),
        _ => (None, None),
    });
    if !profile_free {
        return;
    }
    let trusted = ["444455556666".to_owned()];
    let trust = access::Trust {
        trusted_accounts: &trusted,
        organization_id: Some("o-a1b2c3d4e5"),
        deny_external_access: true,
    };
    let unknown = access::summarize(
        &key_policy,
        &Subject {
            account_id: "111122223333",
            key_arn,
            principal_arn: None,
            identity_policies: None,
            boundary: None,
            trust,
        },
    );
    entry_checks(&unknown, &key_policy, |_| (None, None));
    let reversed = Policy {
        kind: key_policy.kind,
        statements: key_policy.statements.iter().rev().cloned().collect(),
    };
    let subject = Subject {
        account_id: "111122223333",
        key_arn,
        principal_arn: Some(principal),
        identity_policies: supplied,
        boundary: boundary.as_ref(),
        trust: access::Trust::default(),
    };
    let diff = access::diff(&key_policy, &reversed, &subject);
    assert!(
        diff.new_access.is_empty() && diff.removed_access.is_empty(),
        "reordering the statements changed the access: {diff:#?}"
    );
}

/// The configuration parser: the input is the text of a config file.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(settings) = Settings::parse(Some((&text, Path::new("fuzz.toml"))), std::iter::empty())
    {
        let listeners = &settings.listeners;
        assert!(
            listeners.unix_socket.is_some() || listeners.tcp.is_some() || listeners.tls.is_some()
        );
    }
}

/// Request decoding and validation: the input is a request message as sent on the wire.
pub fn requests(data: &[u8]) {
    if let Ok(request) = proto::UpdateEncryptionKeyRequest::decode(data)
        && let Ok((key, _)) = validation::update_request(&request)
    {
        assert_eq!(key.as_str(), request.kms_key_id);
    }
    if let Ok(request) = proto::VerifyKeyPolicyRequest::decode(data) {
        let _ = validation::verify_request(&request, |_| Profile::CodeguruGrants);
    }
    if let Ok(request) = proto::GetEncryptionKeyRequest::decode(data) {
        // An accepted scope is empty (the sidecar's own) or an account id and a Region name.
        if let Ok((_, (account_id, region))) = validation::target_request(
            request.scan_type,
            request.resource_type,
            &request.account_id,
            &request.region,
        ) {
            assert!(account_id.is_empty() || inspector_keyd::domain::is_account_id(account_id));
            assert!(region.is_empty() || inspector_keyd::domain::is_region_name(region));
        }
    }
    if let Ok(request) = proto::BatchGetCodeSnippetRequest::decode(data)
        && let Ok(findings) = validation::finding_arns(&request.finding_arns)
    {
        assert!((1..=validation::MAX_FINDINGS).contains(&findings.len()));
    }
    if let Ok(request) = proto::RecordCodeFindingRequest::decode(data)
        && let Ok((_, snippet)) = validation::record_request(&request, || {
            inspector_keyd::domain::FindingArn::generate("us-east-1", "111122223333")
        })
    {
        // What is accepted is within Inspector's limits.
        assert!((1..=20).contains(&snippet.lines.len()));
        assert!(snippet.suggested_fixes.len() <= 5);
        assert!(inspector_keyd::domain::FindingArn::parse(&snippet.finding_arn).is_ok());
    }
}

/// The AWS-protocol door's request parsing and signature verification. Input: a method
/// selector byte, then the path and query, the headers (`name: value` lines) and the body,
/// separated by NUL bytes. Routing and decoding never panic and what they accept is a
/// message of the operation; a request as sent is never accepted unsigned; and the same
/// request signed as an AWS SDK signs it verifies, while another body does not.
pub fn aws_request(data: &[u8]) {
    const KEY: (&str, &str) = ("KEYDFUZZKEY0000000", "fuzz-secret-0123456789abcdef");
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let method = ["GET", "PUT", "POST", "DELETE"][usize::from(selector) % 4];
    let mut parts = rest.splitn(3, |b| *b == 0);
    let target = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let header_text = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let body = parts.next().unwrap_or_default();
    // What hyper would hand the door: a request target that parses.
    let Ok(uri) = target.parse::<http::Uri>() else {
        return;
    };
    let Some(path_and_query) = uri.path_and_query().map(|p| p.as_str().to_owned()) else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    for line in header_text.lines() {
        if let Some((name, value)) = line.split_once(':')
            && let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name.trim().as_bytes()),
                http::HeaderValue::from_str(value.trim()),
            )
        {
            headers.append(name, value);
        }
    }
    if let Ok(operation) = protocol::route(method, uri.path())
        && let Ok(message) = protocol::decode_request(operation, uri.query(), body)
    {
        match operation {
            protocol::Operation::GetEncryptionKey => {
                assert!(proto::GetEncryptionKeyRequest::decode(message.as_slice()).is_ok())
            }
            protocol::Operation::UpdateEncryptionKey => {
                assert!(proto::UpdateEncryptionKeyRequest::decode(message.as_slice()).is_ok())
            }
            protocol::Operation::ResetEncryptionKey => {
                assert!(proto::ResetEncryptionKeyRequest::decode(message.as_slice()).is_ok())
            }
            protocol::Operation::BatchGetCodeSnippet => {
                assert!(proto::BatchGetCodeSnippetRequest::decode(message.as_slice()).is_ok())
            }
        }
    }
    let secret_of = |id: &str| (id == KEY.0).then(|| zeroize::Zeroizing::new(KEY.1.to_owned()));
    let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_780_000_000);
    let request = |headers, body| sigv4::Request {
        method,
        path_and_query: &path_and_query,
        headers,
        body,
    };
    // The fuzzer cannot sign: whatever it sent is refused.
    assert!(sigv4::verify(&request(&headers, body), secret_of, "us-east-1", now).is_err());
    // Signed as an SDK signs it (when the signer takes it: header values that are text), it
    // verifies.
    if headers.values().any(|v| v.to_str().is_err()) {
        return;
    }
    let mut signed = headers.clone();
    signed.remove("authorization");
    signed.remove("x-amz-date");
    signed.remove("x-amz-content-sha256");
    signed.insert("host", http::HeaderValue::from_static("127.0.0.1:50052"));
    if sigv4::sign_for_tests(
        method,
        &path_and_query,
        &mut signed,
        body,
        KEY,
        "us-east-1",
        now,
    )
    .is_ok()
    {
        let verified = sigv4::verify(&request(&signed, body), secret_of, "us-east-1", now);
        assert_eq!(
            verified.as_deref(),
            Ok(KEY.0),
            "a signed request was refused"
        );
        let mut other = body.to_vec();
        other.push(b'!');
        assert!(sigv4::verify(&request(&signed, &other), secret_of, "us-east-1", now).is_err());
    }
}
