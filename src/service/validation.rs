//! Request validation, mirroring what the Inspector API accepts. Every problem becomes a
//! field violation; a request with any violation changes nothing.

use crate::{
    domain::{
        CodeLine, CodeSnippet, FindingArn, KeyArn, ResourceType, ScanType, SuggestedFix, Target,
    },
    proto,
    verify::{KeyMetadata, Profile, parse_describe_key},
};

/// One bad field of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: &'static str,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: &'static str, description: impl Into<String>) -> FieldViolation {
        FieldViolation {
            field,
            description: description.into(),
        }
    }
}

fn scan_type(value: i32) -> Result<ScanType, FieldViolation> {
    let value = proto::ScanType::try_from(value).map_err(|_| {
        FieldViolation::new("scan_type", format!("{value} is not a ScanType value"))
    })?;
    ScanType::from_proto(value)
        .ok_or_else(|| FieldViolation::new("scan_type", "is required (for example SCAN_TYPE_CODE)"))
}

fn resource_type(value: i32) -> Result<ResourceType, FieldViolation> {
    let value = proto::ResourceType::try_from(value).map_err(|_| {
        FieldViolation::new(
            "resource_type",
            format!("{value} is not a ResourceType value"),
        )
    })?;
    ResourceType::from_proto(value).ok_or_else(|| {
        FieldViolation::new(
            "resource_type",
            "is required (for example RESOURCE_TYPE_AWS_LAMBDA_FUNCTION)",
        )
    })
}

/// Checks the (scan type, resource type) pair of a request; pushes a violation per bad
/// field. The field blamed for an unsupported pair is the one that makes it unsupported.
fn target(scan: i32, resource: i32, violations: &mut Vec<FieldViolation>) -> Option<Target> {
    let scan = scan_type(scan).map_err(|v| violations.push(v)).ok();
    let resource = resource_type(resource).map_err(|v| violations.push(v)).ok();
    let (scan, resource) = (scan?, resource?);
    let target = Target::new(scan, resource);
    if target.is_none() {
        let field = if Target::all().any(|t| t.scan_type() == scan) {
            "resource_type"
        } else {
            "scan_type"
        };
        violations.push(FieldViolation::new(
            field,
            format!(
                "customer managed keys are not supported for {scan} + {resource}; supported pairs: {}",
                Target::supported_list(),
                scan = scan.as_aws_str(),
                resource = resource.as_aws_str(),
            ),
        ));
    }
    target
}

/// The account and Region a request names, when well formed: each empty (the sidecar's
/// own) or a 12-digit account id and a Region name. Pushes a violation per bad field.
pub fn requested_scope<'r>(
    account_id: &'r str,
    region: &'r str,
    violations: &mut Vec<FieldViolation>,
) -> (&'r str, &'r str) {
    if !account_id.is_empty() && !crate::domain::is_account_id(account_id) {
        violations.push(FieldViolation::new(
            "account_id",
            format!(
                "`{}` is not a 12-digit AWS account id (or empty, for the sidecar's own)",
                shown(account_id)
            ),
        ));
    }
    if !region.is_empty() && !crate::domain::is_region_name(region) {
        violations.push(FieldViolation::new(
            "region",
            format!(
                "`{}` is not an AWS Region name such as us-east-1 (or empty, for the sidecar's own)",
                shown(region)
            ),
        ));
    }
    (account_id, region)
}

/// The account and Region filters of a ListEncryptionKeys request: each a 12-digit account
/// id, each a Region name, at most 1,000 of each.
pub fn inventory_filters(
    account_ids: &[String],
    regions: &[String],
) -> Result<(), Vec<FieldViolation>> {
    let mut violations = Vec::new();
    for (field, values, valid, what) in [
        (
            "account_ids",
            account_ids,
            crate::domain::is_account_id as fn(&str) -> bool,
            "a 12-digit AWS account id",
        ),
        (
            "regions",
            regions,
            crate::domain::is_region_name,
            "an AWS Region name such as us-east-1",
        ),
    ] {
        if values.len() > 1000 {
            violations.push(FieldViolation::new(field, "holds more than 1,000 values"));
        } else if let Some(bad) = values.iter().find(|v| !valid(v)) {
            violations.push(FieldViolation::new(
                field,
                format!("`{}` is not {what}", shown(bad)),
            ));
        }
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(violations)
    }
}

/// A value echoed in a message: short and printable.
fn shown(value: &str) -> String {
    value.chars().take(64).filter(|c| !c.is_control()).collect()
}

/// The target of a request, and the account and Region it names (empty: the sidecar's own).
pub type Requested<'r> = (Target, (&'r str, &'r str));

/// The target and scope of a Get, Reset or Watch request.
pub fn target_request<'r>(
    scan: i32,
    resource: i32,
    account_id: &'r str,
    region: &'r str,
) -> Result<Requested<'r>, Vec<FieldViolation>> {
    let mut violations = Vec::new();
    let target = target(scan, resource, &mut violations);
    let scope = requested_scope(account_id, region, &mut violations);
    match target {
        Some(target) if violations.is_empty() => Ok((target, scope)),
        _ => Err(violations),
    }
}

/// The key ARN, target and scope of an Update request.
pub fn update_request(
    request: &proto::UpdateEncryptionKeyRequest,
) -> Result<(KeyArn, Requested<'_>), Vec<FieldViolation>> {
    let mut violations = Vec::new();
    let key = KeyArn::parse(&request.kms_key_id)
        .map_err(|e| violations.push(FieldViolation::new("kms_key_id", e.to_string())))
        .ok();
    let target = target(request.scan_type, request.resource_type, &mut violations);
    let scope = requested_scope(&request.account_id, &request.region, &mut violations);
    match (key, target) {
        (Some(key), Some(target)) if violations.is_empty() => Ok((key, (target, scope))),
        _ => Err(violations),
    }
}

/// A profile given by name.
pub fn profile_name(name: &str) -> Result<Profile, Vec<FieldViolation>> {
    if name.is_empty() {
        return Err(vec![FieldViolation::new(
            "profile",
            format!("is required; one of {}", Profile::names()),
        )]);
    }
    Profile::parse(name).ok_or_else(|| {
        vec![FieldViolation::new(
            "profile",
            format!(
                "`{name}` is not a verification profile; one of {}",
                Profile::names()
            ),
        )]
    })
}

/// The key a VerifyKeyPolicy request names.
pub enum KeyToVerify<'r> {
    /// A key the backend holds.
    Stored(KeyArn),
    /// Documents in the request.
    Inline {
        metadata: Option<Box<KeyMetadata>>,
        key_policy: &'r str,
    },
}

/// A checked VerifyKeyPolicy request.
pub struct VerifyRequest<'r> {
    pub profile: Profile,
    /// The account and Region verified in (empty: the sidecar's own).
    pub scope: (&'r str, &'r str),
    pub principal_arn: Option<&'r str>,
    pub key: KeyToVerify<'r>,
}

/// Checks a VerifyKeyPolicy request; `profile_for` gives the configured profile of a
/// target when the request names none.
pub fn verify_request<'r>(
    request: &'r proto::VerifyKeyPolicyRequest,
    profile_for: impl Fn(Target) -> Profile,
) -> Result<VerifyRequest<'r>, Vec<FieldViolation>> {
    let mut violations = Vec::new();
    let profile = if request.profile.is_empty() {
        if request.scan_type == 0 && request.resource_type == 0 {
            violations.push(FieldViolation::new(
                "profile",
                format!(
                    "name a profile ({}) or give scan_type and resource_type to use the configured one",
                    Profile::names()
                ),
            ));
            None
        } else {
            target(request.scan_type, request.resource_type, &mut violations).map(profile_for)
        }
    } else {
        profile_name(&request.profile)
            .map_err(|v| violations.extend(v))
            .ok()
    };
    let scope = requested_scope(&request.account_id, &request.region, &mut violations);
    let principal_arn =
        (!request.principal_arn.is_empty()).then_some(request.principal_arn.as_str());
    if principal_arn.is_some()
        && matches!(
            request.key,
            Some(proto::verify_key_policy_request::Key::KmsKeyId(_))
        )
    {
        violations.push(FieldViolation::new(
            "principal_arn",
            "only with inline_key: a stored key is verified for the configured principal",
        ));
    }
    let key = match &request.key {
        None => {
            violations.push(FieldViolation::new(
                "kms_key_id",
                "set kms_key_id or inline_key",
            ));
            None
        }
        Some(proto::verify_key_policy_request::Key::KmsKeyId(id)) => KeyArn::parse(id)
            .map_err(|e| violations.push(FieldViolation::new("kms_key_id", e.to_string())))
            .ok()
            .map(KeyToVerify::Stored),
        Some(proto::verify_key_policy_request::Key::InlineKey(inline)) => {
            let metadata = if inline.key_metadata_json.is_empty() {
                Some(None)
            } else {
                parse_describe_key(&inline.key_metadata_json)
                    .map_err(|e| {
                        violations.push(FieldViolation::new("inline_key.key_metadata_json", e))
                    })
                    .ok()
                    .map(|m| Some(Box::new(m)))
            };
            metadata.map(|metadata| KeyToVerify::Inline {
                metadata,
                key_policy: &inline.key_policy,
            })
        }
    };
    match (profile, key) {
        (Some(profile), Some(key)) if violations.is_empty() => Ok(VerifyRequest {
            profile,
            scope,
            principal_arn,
            key,
        }),
        _ => Err(violations),
    }
}

/// Findings a BatchGetCodeSnippet request may name at once.
pub const MAX_FINDINGS: usize = 10;

/// The finding ARNs of a BatchGetCodeSnippet request: 1 to 10, each an Inspector finding ARN.
pub fn finding_arns(arns: &[String]) -> Result<Vec<FindingArn>, Vec<FieldViolation>> {
    if arns.is_empty() || arns.len() > MAX_FINDINGS {
        return Err(vec![FieldViolation::new(
            "finding_arns",
            format!(
                "{} finding ARNs given; 1 to {MAX_FINDINGS} are accepted",
                arns.len()
            ),
        )]);
    }
    let mut parsed = Vec::with_capacity(arns.len());
    let mut violations = Vec::new();
    for (i, arn) in arns.iter().enumerate() {
        match FindingArn::parse(arn) {
            Ok(arn) => parsed.push(arn),
            Err(message) => violations.push(FieldViolation::new(
                "finding_arns",
                format!("finding_arns[{i}]: {message}"),
            )),
        }
    }
    if violations.is_empty() {
        Ok(parsed)
    } else {
        Err(violations)
    }
}

/// A RecordCodeFinding request: the target (scan type CODE) and the snippet in the limits
/// of Inspector's `CodeSnippetResult`. An empty finding ARN gets a new one.
pub fn record_request(
    request: &proto::RecordCodeFindingRequest,
    new_arn: impl FnOnce() -> FindingArn,
) -> Result<(Target, CodeSnippet), Vec<FieldViolation>> {
    let mut violations = Vec::new();
    let target = target(
        proto::ScanType::Code as i32,
        request.resource_type,
        &mut violations,
    );
    let Some(finding) = &request.finding else {
        violations.push(FieldViolation::new("finding", "is required"));
        return Err(violations);
    };
    let finding_arn = if finding.finding_arn.is_empty() {
        Some(new_arn())
    } else {
        FindingArn::parse(&finding.finding_arn)
            .map_err(|message| violations.push(FieldViolation::new("finding.finding_arn", message)))
            .ok()
    };
    let lines = &finding.code_snippet;
    if lines.is_empty() || lines.len() > 20 {
        violations.push(FieldViolation::new(
            "finding.code_snippet",
            format!("{} lines given; 1 to 20 are accepted", lines.len()),
        ));
    }
    if let Some(i) = lines.iter().position(|l| l.content.chars().count() > 240) {
        violations.push(FieldViolation::new(
            "finding.code_snippet",
            format!("code_snippet[{i}].content is longer than 240 characters"),
        ));
    }
    let fixes = &finding.suggested_fixes;
    if fixes.len() > 5 {
        violations.push(FieldViolation::new(
            "finding.suggested_fixes",
            format!("{} fixes given; at most 5 are accepted", fixes.len()),
        ));
    }
    for (i, fix) in fixes.iter().enumerate() {
        let (description, code) = (fix.description.chars().count(), fix.code.chars().count());
        if !(1..=1000).contains(&description) || !(1..=2500).contains(&code) {
            violations.push(FieldViolation::new(
                "finding.suggested_fixes",
                format!(
                    "suggested_fixes[{i}]: the description must be 1 to 1,000 characters and the code 1 to 2,500"
                ),
            ));
        }
    }
    if finding.start_line > finding.end_line {
        violations.push(FieldViolation::new(
            "finding.end_line",
            format!(
                "end_line {} is before start_line {}",
                finding.end_line, finding.start_line
            ),
        ));
    }
    match (target, finding_arn) {
        (Some(target), Some(arn)) if violations.is_empty() => Ok((
            target,
            CodeSnippet {
                finding_arn: arn.as_str().to_owned(),
                start_line: finding.start_line,
                end_line: finding.end_line,
                lines: lines
                    .iter()
                    .map(|l| CodeLine {
                        content: l.content.clone(),
                        line_number: l.line_number,
                    })
                    .collect(),
                suggested_fixes: fixes
                    .iter()
                    .map(|f| SuggestedFix {
                        description: f.description.clone(),
                        code: f.code.clone(),
                    })
                    .collect(),
            },
        )),
        _ => Err(violations),
    }
}

/// The target of a local code-scanning request (scan type CODE).
pub fn code_scanning_target(resource_type: i32) -> Result<Target, Vec<FieldViolation>> {
    target_request(proto::ScanType::Code as i32, resource_type, "", "").map(|(target, _)| target)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAMBDA: i32 = proto::ResourceType::AwsLambdaFunction as i32;
    const CODE: i32 = proto::ScanType::Code as i32;

    fn fields(v: Vec<FieldViolation>) -> Vec<&'static str> {
        v.into_iter().map(|v| v.field).collect()
    }

    #[test]
    fn every_bad_field_is_reported() {
        let request = proto::UpdateEncryptionKeyRequest {
            kms_key_id: "alias/x".into(),
            scan_type: 0,
            resource_type: 99,
            validate_only: false,
            ..Default::default()
        };
        let violations = update_request(&request).unwrap_err();
        assert_eq!(
            fields(violations.clone()),
            ["kms_key_id", "scan_type", "resource_type"]
        );
        assert!(
            violations[0]
                .description
                .contains("only key ARNs are accepted")
        );
        assert!(
            violations[2]
                .description
                .contains("99 is not a ResourceType value")
        );
    }

    #[test]
    fn unsupported_pairs_blame_the_right_field() {
        let v = target_request(proto::ScanType::Package as i32, LAMBDA, "", "").unwrap_err();
        assert_eq!(fields(v.clone()), ["scan_type"]);
        assert!(
            v[0].description
                .contains("CODE + AWS_LAMBDA_FUNCTION, CODE + CODE_REPOSITORY")
        );
        let v =
            target_request(CODE, proto::ResourceType::AwsEc2Instance as i32, "", "").unwrap_err();
        assert_eq!(fields(v), ["resource_type"]);
        assert!(target_request(CODE, LAMBDA, "", "").is_ok());
    }
}
