//! Amazon Inspector's REST-JSON protocol ⇄ the gRPC messages, as the service model
//! (botocore's `inspector2/2020-06-08/service-2.json`) defines it for the four operations
//! the door serves: which method and path is which operation, the query and body members
//! of each request, the JSON of each answer, and — in [`AwsError::from_status`], the one
//! place — how a gRPC status becomes an AWS error (status code, `x-amzn-ErrorType`, JSON
//! body). What the service validates (key ARNs, supported targets, finding ARNs) it still
//! validates; here only what is protocol: members that must be present, their JSON types
//! and enum spellings.

use std::time::Duration;

use http::StatusCode;
use prost::Message;
use serde_json::{Map, Value, json};
use tonic::Code;
use tonic_types::StatusExt;

use crate::{
    domain::{ResourceType, ScanType},
    proto,
};

/// The operations the door serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    GetEncryptionKey,
    UpdateEncryptionKey,
    ResetEncryptionKey,
    BatchGetCodeSnippet,
}

impl Operation {
    pub const ALL: [Operation; 4] = [
        Operation::GetEncryptionKey,
        Operation::UpdateEncryptionKey,
        Operation::ResetEncryptionKey,
        Operation::BatchGetCodeSnippet,
    ];

    /// The operation's name in the service model (and the gRPC method's).
    pub fn name(self) -> &'static str {
        match self {
            Operation::GetEncryptionKey => "GetEncryptionKey",
            Operation::UpdateEncryptionKey => "UpdateEncryptionKey",
            Operation::ResetEncryptionKey => "ResetEncryptionKey",
            Operation::BatchGetCodeSnippet => "BatchGetCodeSnippet",
        }
    }

    /// Its HTTP method and path in the service model.
    pub fn http(self) -> (&'static str, &'static str) {
        match self {
            Operation::GetEncryptionKey => ("GET", "/encryptionkey/get"),
            Operation::UpdateEncryptionKey => ("PUT", "/encryptionkey/update"),
            Operation::ResetEncryptionKey => ("PUT", "/encryptionkey/reset"),
            Operation::BatchGetCodeSnippet => ("POST", "/codesnippet/batchget"),
        }
    }

    /// The gRPC method the door calls for it.
    pub fn grpc_path(self) -> &'static str {
        use crate::rpc::paths::encryption_key_service as keys;
        match self {
            Operation::GetEncryptionKey => keys::GET_ENCRYPTION_KEY,
            Operation::UpdateEncryptionKey => keys::UPDATE_ENCRYPTION_KEY,
            Operation::ResetEncryptionKey => keys::RESET_ENCRYPTION_KEY,
            Operation::BatchGetCodeSnippet => keys::BATCH_GET_CODE_SNIPPET,
        }
    }
}

/// Every operation of the Inspector2 API by method and path (from the service model), so
/// that a request for one the door does not serve is told which it asked for.
/// `/tags/{resourceArn}` is matched by its prefix.
pub const INSPECTOR2_OPERATIONS: &[(&str, &str, &str)] = &[
    ("POST", "/accountpermissions/list", "ListAccountPermissions"),
    (
        "POST",
        "/cis/scan-configuration/create",
        "CreateCisScanConfiguration",
    ),
    (
        "POST",
        "/cis/scan-configuration/delete",
        "DeleteCisScanConfiguration",
    ),
    (
        "POST",
        "/cis/scan-configuration/list",
        "ListCisScanConfigurations",
    ),
    (
        "POST",
        "/cis/scan-configuration/update",
        "UpdateCisScanConfiguration",
    ),
    (
        "POST",
        "/cis/scan-result/check/list",
        "ListCisScanResultsAggregatedByChecks",
    ),
    (
        "POST",
        "/cis/scan-result/details/get",
        "GetCisScanResultDetails",
    ),
    (
        "POST",
        "/cis/scan-result/resource/list",
        "ListCisScanResultsAggregatedByTargetResource",
    ),
    ("POST", "/cis/scan/list", "ListCisScans"),
    ("POST", "/cis/scan/report/get", "GetCisScanReport"),
    ("PUT", "/cissession/health/send", "SendCisSessionHealth"),
    ("PUT", "/cissession/start", "StartCisSession"),
    ("PUT", "/cissession/stop", "StopCisSession"),
    (
        "PUT",
        "/cissession/telemetry/send",
        "SendCisSessionTelemetry",
    ),
    ("POST", "/codesnippet/batchget", "BatchGetCodeSnippet"),
    ("POST", "/configuration/get", "GetConfiguration"),
    ("POST", "/configuration/update", "UpdateConfiguration"),
    ("POST", "/coverage/list", "ListCoverage"),
    (
        "POST",
        "/coverage/statistics/list",
        "ListCoverageStatistics",
    ),
    (
        "POST",
        "/delegatedadminaccounts/disable",
        "DisableDelegatedAdminAccount",
    ),
    (
        "POST",
        "/delegatedadminaccounts/enable",
        "EnableDelegatedAdminAccount",
    ),
    (
        "POST",
        "/delegatedadminaccounts/get",
        "GetDelegatedAdminAccount",
    ),
    (
        "POST",
        "/delegatedadminaccounts/list",
        "ListDelegatedAdminAccounts",
    ),
    ("POST", "/disable", "Disable"),
    (
        "POST",
        "/ec2deepinspectionconfiguration/get",
        "GetEc2DeepInspectionConfiguration",
    ),
    (
        "POST",
        "/ec2deepinspectionconfiguration/org/update",
        "UpdateOrgEc2DeepInspectionConfiguration",
    ),
    (
        "POST",
        "/ec2deepinspectionconfiguration/update",
        "UpdateEc2DeepInspectionConfiguration",
    ),
    (
        "POST",
        "/ec2deepinspectionstatus/member/batch/get",
        "BatchGetMemberEc2DeepInspectionStatus",
    ),
    (
        "POST",
        "/ec2deepinspectionstatus/member/batch/update",
        "BatchUpdateMemberEc2DeepInspectionStatus",
    ),
    ("POST", "/enable", "Enable"),
    ("GET", "/encryptionkey/get", "GetEncryptionKey"),
    ("PUT", "/encryptionkey/reset", "ResetEncryptionKey"),
    ("PUT", "/encryptionkey/update", "UpdateEncryptionKey"),
    ("POST", "/filters/create", "CreateFilter"),
    ("POST", "/filters/delete", "DeleteFilter"),
    ("POST", "/filters/list", "ListFilters"),
    ("POST", "/filters/update", "UpdateFilter"),
    (
        "POST",
        "/findings/aggregation/list",
        "ListFindingAggregations",
    ),
    (
        "POST",
        "/findings/details/batch/get",
        "BatchGetFindingDetails",
    ),
    ("POST", "/findings/list", "ListFindings"),
    ("POST", "/freetrialinfo/batchget", "BatchGetFreeTrialInfo"),
    ("POST", "/members/associate", "AssociateMember"),
    ("POST", "/members/disassociate", "DisassociateMember"),
    ("POST", "/members/get", "GetMember"),
    ("POST", "/members/list", "ListMembers"),
    (
        "POST",
        "/organizationconfiguration/describe",
        "DescribeOrganizationConfiguration",
    ),
    (
        "POST",
        "/organizationconfiguration/update",
        "UpdateOrganizationConfiguration",
    ),
    ("POST", "/reporting/cancel", "CancelFindingsReport"),
    ("POST", "/reporting/create", "CreateFindingsReport"),
    ("POST", "/reporting/status/get", "GetFindingsReportStatus"),
    ("POST", "/sbomexport/cancel", "CancelSbomExport"),
    ("POST", "/sbomexport/create", "CreateSbomExport"),
    ("POST", "/sbomexport/get", "GetSbomExport"),
    ("POST", "/status/batch/get", "BatchGetAccountStatus"),
    ("DELETE", "/tags/{resourceArn}", "UntagResource"),
    ("GET", "/tags/{resourceArn}", "ListTagsForResource"),
    ("POST", "/tags/{resourceArn}", "TagResource"),
    ("POST", "/usage/list", "ListUsageTotals"),
    ("POST", "/vulnerabilities/search", "SearchVulnerabilities"),
];

/// `GetEncryptionKey, UpdateEncryptionKey, ResetEncryptionKey and BatchGetCodeSnippet`.
fn served_list() -> String {
    let names: Vec<&str> = Operation::ALL.iter().map(|o| o.name()).collect();
    format!(
        "{} and {}",
        names[..names.len() - 1].join(", "),
        names[names.len() - 1]
    )
}

/// The operation a method and path name, or the error that says why none is served.
pub fn route(method: &str, path: &str) -> Result<Operation, AwsError> {
    if let Some(operation) = Operation::ALL
        .into_iter()
        .find(|o| o.http() == (method, path))
    {
        return Ok(operation);
    }
    let known = INSPECTOR2_OPERATIONS.iter().find(|(m, p, _)| {
        *m == method
            && match p.strip_suffix("{resourceArn}") {
                Some(prefix) => path.len() > prefix.len() && path.starts_with(prefix),
                None => *p == path,
            }
    });
    let message = match known {
        Some((_, _, name)) => format!(
            "{name} is an Amazon Inspector operation this sidecar does not serve; it serves {}",
            served_list()
        ),
        None => match Operation::ALL.iter().find(|o| o.http().1 == path) {
            Some(operation) => {
                let (method_wanted, _) = operation.http();
                format!(
                    "{} is {method_wanted} {path}, not {}",
                    operation.name(),
                    method.escape_default()
                )
            }
            None => format!(
                "`{} {}` is not an Amazon Inspector operation; this sidecar serves {}",
                method.escape_default(),
                path.chars().take(200).collect::<String>().escape_default(),
                served_list()
            ),
        },
    };
    Err(AwsError::new(
        StatusCode::NOT_FOUND,
        "UnknownOperationException",
        message,
    ))
}

/// Where a door request's scope comes from, for the message of a scope not managed.
pub const SCOPE_OF_A_DOOR_REQUEST: &str = "A request acts in the Region it is signed for (the AWS CLI's --region) and in its access key's account (the aws_account_id of its profile in the sidecar's credentials file; the sidecar's own account when it has none)";

/// `ValidationException.reason` values.
const CANNOT_PARSE: &str = "CANNOT_PARSE";
const FIELD_VALIDATION_FAILED: &str = "FIELD_VALIDATION_FAILED";
const OTHER: &str = "OTHER";

/// An error as the door answers it: the shapes of the service model.
#[derive(Debug, Clone, PartialEq)]
pub struct AwsError {
    pub status: StatusCode,
    /// `x-amzn-ErrorType`, such as `ValidationException`.
    pub code: &'static str,
    pub message: String,
    /// ValidationException's `reason` and `fields` (`name`, `message`).
    pub reason: Option<&'static str>,
    pub fields: Vec<(String, String)>,
    /// ThrottlingException's and InternalServerException's `Retry-After` header, in seconds.
    pub retry_after: Option<u64>,
}

impl AwsError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> AwsError {
        AwsError {
            status,
            code,
            message: message.into(),
            reason: None,
            fields: Vec::new(),
            retry_after: None,
        }
    }

    fn validation(
        reason: &'static str,
        message: String,
        fields: Vec<(String, String)>,
    ) -> AwsError {
        AwsError {
            reason: Some(reason),
            fields,
            ..AwsError::new(StatusCode::BAD_REQUEST, "ValidationException", message)
        }
    }

    /// A request whose body cannot be read or parsed at all.
    pub fn unreadable(message: String) -> AwsError {
        AwsError::validation(CANNOT_PARSE, message, Vec::new())
    }

    /// A member that cannot be read (missing, of the wrong JSON type, not an enum value).
    fn member(reason: &'static str, name: &str, problem: String) -> AwsError {
        AwsError::validation(
            reason,
            format!("1 validation error detected: {name}: {problem}"),
            vec![(name.to_owned(), problem)],
        )
    }

    /// The JSON body of the error.
    pub fn body(&self) -> Value {
        let mut body = Map::new();
        body.insert("message".into(), Value::String(self.message.clone()));
        if let Some(reason) = self.reason {
            body.insert("reason".into(), Value::String(reason.into()));
            body.insert(
                "fields".into(),
                Value::Array(
                    self.fields
                        .iter()
                        .map(|(name, message)| json!({"name": name, "message": message}))
                        .collect(),
                ),
            );
        }
        Value::Object(body)
    }

    /// The AWS error a gRPC status is, for `operation`: invalid input and a key that fails
    /// verification are ValidationException; the AWS owned key in use (or any other thing
    /// not found) ResourceNotFoundException; a missing role AccessDeniedException; shed,
    /// throttled or over quota ThrottlingException with Retry-After; anything else
    /// (backend down, timeouts, internal faults) InternalServerException. The message is the
    /// status's own (which never carries AWS text or secrets, see `crate::status`).
    pub fn from_status(status: &tonic::Status, operation: Operation) -> AwsError {
        let details = status.get_error_details();
        let reason = details
            .error_info()
            .map(|i| i.reason.as_str())
            .unwrap_or_default();
        let retry_after = details
            .retry_info()
            .and_then(|r| r.retry_delay)
            .map(seconds);
        let message = status.message().to_owned();
        match status.code() {
            // The scope a door request acts in is no member of it: its Region is the one it is
            // signed for and its account the access key's. So the message says where those
            // come from, and only a member (a finding's ARN) is a field.
            Code::InvalidArgument if reason == "SCOPE_NOT_MANAGED" => {
                let fields: Vec<(String, String)> = details
                    .bad_request()
                    .map(|b| {
                        b.field_violations
                            .iter()
                            .filter(|v| v.field == "finding_arns")
                            .map(|v| (aws_member_name(&v.field), v.description.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                let reason = if fields.is_empty() {
                    OTHER
                } else {
                    FIELD_VALIDATION_FAILED
                };
                AwsError::validation(
                    reason,
                    format!("{message}. {SCOPE_OF_A_DOOR_REQUEST}"),
                    fields,
                )
            }
            Code::InvalidArgument => {
                let fields = details
                    .bad_request()
                    .map(|b| {
                        b.field_violations
                            .iter()
                            .map(|v| (aws_member_name(&v.field), v.description.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                AwsError::validation(FIELD_VALIDATION_FAILED, message, fields)
            }
            Code::FailedPrecondition if reason == "KEY_VERIFICATION_FAILED" => {
                let fields = details
                    .precondition_failure()
                    .map(|p| {
                        p.violations
                            .iter()
                            .map(|v| {
                                (
                                    "kmsKeyId".to_owned(),
                                    format!("{}: {}", v.r#type, v.description),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                AwsError::validation(FIELD_VALIDATION_FAILED, message, fields)
            }
            Code::FailedPrecondition => AwsError::validation(OTHER, message, Vec::new()),
            Code::NotFound if operation != Operation::BatchGetCodeSnippet => {
                AwsError::new(StatusCode::NOT_FOUND, "ResourceNotFoundException", message)
            }
            Code::PermissionDenied | Code::Unauthenticated => {
                AwsError::new(StatusCode::FORBIDDEN, "AccessDeniedException", message)
            }
            Code::ResourceExhausted => AwsError {
                retry_after: Some(retry_after.unwrap_or(1)),
                ..AwsError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "ThrottlingException",
                    message,
                )
            },
            _ => AwsError {
                retry_after,
                ..AwsError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalServerException",
                    message,
                )
            },
        }
    }
}

/// Whole seconds to wait, at least one (`Retry-After` has no fractions).
fn seconds(delay: Duration) -> u64 {
    delay.as_secs() + u64::from(delay.subsec_nanos() > 0)
}

/// The service model's name of a request member the gRPC API names in snake case
/// (`kms_key_id` → `kmsKeyId`).
fn aws_member_name(field: &str) -> String {
    let mut name = String::with_capacity(field.len());
    let mut upper = false;
    for c in field.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            name.extend(c.to_uppercase());
            upper = false;
        } else {
            name.push(c);
        }
    }
    name
}

/// The members of a JSON request body (an empty body is an empty structure).
fn body_members(body: &[u8]) -> Result<Map<String, Value>, AwsError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice(body) {
        Ok(Value::Object(members)) => Ok(members),
        Ok(_) => Err(AwsError::unreadable(
            "the request body must be a JSON object".into(),
        )),
        Err(e) => Err(AwsError::unreadable(format!(
            "the request body is not JSON: {e}"
        ))),
    }
}

/// A required string member.
fn string_member<'a>(members: &'a Map<String, Value>, name: &str) -> Result<&'a str, AwsError> {
    match members.get(name) {
        None | Some(Value::Null) => Err(AwsError::member(
            FIELD_VALIDATION_FAILED,
            name,
            "is required".into(),
        )),
        Some(Value::String(text)) => Ok(text),
        Some(_) => Err(AwsError::member(
            CANNOT_PARSE,
            name,
            "must be a string".into(),
        )),
    }
}

fn scan_type(name: &str, text: &str) -> Result<i32, AwsError> {
    ScanType::from_aws_str(text)
        .map(|t| t.to_proto() as i32)
        .ok_or_else(|| {
            let values: Vec<&str> = ScanType::ALL.iter().map(|t| t.as_aws_str()).collect();
            AwsError::member(
                FIELD_VALIDATION_FAILED,
                name,
                format!(
                    "`{}` is not a ScanType (one of {})",
                    shown(text),
                    values.join(", ")
                ),
            )
        })
}

fn resource_type(name: &str, text: &str) -> Result<i32, AwsError> {
    ResourceType::from_aws_str(text)
        .map(|t| t.to_proto() as i32)
        .ok_or_else(|| {
            let values: Vec<&str> = ResourceType::ALL.iter().map(|t| t.as_aws_str()).collect();
            AwsError::member(
                FIELD_VALIDATION_FAILED,
                name,
                format!(
                    "`{}` is not a ResourceType (one of {})",
                    shown(text),
                    values.join(", ")
                ),
            )
        })
}

/// A caller's value in a message: at most 200 characters, control characters escaped.
fn shown(text: &str) -> String {
    text.chars()
        .take(200)
        .collect::<String>()
        .escape_default()
        .to_string()
}

/// The query parameters of a request, each at most once.
fn query_parameters(query: Option<&str>) -> Result<Vec<(String, String)>, AwsError> {
    let mut parameters: Vec<(String, String)> = Vec::new();
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if parameters.iter().any(|(n, _)| *n == name) {
            return Err(AwsError::member(
                CANNOT_PARSE,
                &name,
                "appears more than once in the query".into(),
            ));
        }
        parameters.push((name.into_owned(), value.into_owned()));
    }
    Ok(parameters)
}

fn query_member<'a>(parameters: &'a [(String, String)], name: &str) -> Result<&'a str, AwsError> {
    parameters
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .ok_or_else(|| {
            AwsError::member(
                FIELD_VALIDATION_FAILED,
                name,
                "is required (a query parameter)".into(),
            )
        })
}

/// The gRPC request message (encoded) of an operation's REST-JSON request, in the
/// sidecar's own scope (the account and Region left empty).
pub fn decode_request(
    operation: Operation,
    query: Option<&str>,
    body: &[u8],
) -> Result<Vec<u8>, AwsError> {
    decode_request_in(operation, query, body, CallScope::default())
}

/// The account and Region a door request acts in, as the gRPC request carries them (empty:
/// the sidecar's own). The Region is the one the request is signed for, the account that of
/// the access key (its profile's `aws_account_id`), as AWS knows both from the signature.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallScope<'a> {
    pub account_id: &'a str,
    pub region: &'a str,
}

/// The gRPC request message (encoded) of an operation's REST-JSON request, acting in
/// `scope`. A BatchGetCodeSnippet names its findings' scopes in their ARNs (the service
/// answers those of other accounts than the access key's ACCESS_DENIED each).
pub fn decode_request_in(
    operation: Operation,
    query: Option<&str>,
    body: &[u8],
    scope: CallScope<'_>,
) -> Result<Vec<u8>, AwsError> {
    let (account_id, region) = (scope.account_id.to_owned(), scope.region.to_owned());
    Ok(match operation {
        Operation::GetEncryptionKey => {
            let parameters = query_parameters(query)?;
            proto::GetEncryptionKeyRequest {
                scan_type: scan_type("scanType", query_member(&parameters, "scanType")?)?,
                resource_type: resource_type(
                    "resourceType",
                    query_member(&parameters, "resourceType")?,
                )?,
                account_id,
                region,
            }
            .encode_to_vec()
        }
        Operation::UpdateEncryptionKey => {
            let members = body_members(body)?;
            proto::UpdateEncryptionKeyRequest {
                kms_key_id: string_member(&members, "kmsKeyId")?.to_owned(),
                scan_type: scan_type("scanType", string_member(&members, "scanType")?)?,
                resource_type: resource_type(
                    "resourceType",
                    string_member(&members, "resourceType")?,
                )?,
                validate_only: false,
                account_id,
                region,
            }
            .encode_to_vec()
        }
        Operation::ResetEncryptionKey => {
            let members = body_members(body)?;
            proto::ResetEncryptionKeyRequest {
                scan_type: scan_type("scanType", string_member(&members, "scanType")?)?,
                resource_type: resource_type(
                    "resourceType",
                    string_member(&members, "resourceType")?,
                )?,
                account_id,
                region,
            }
            .encode_to_vec()
        }
        Operation::BatchGetCodeSnippet => {
            let members = body_members(body)?;
            let finding_arns = match members.get("findingArns") {
                None | Some(Value::Null) => {
                    return Err(AwsError::member(
                        FIELD_VALIDATION_FAILED,
                        "findingArns",
                        "is required".into(),
                    ));
                }
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|item| item.as_str().map(str::to_owned))
                    .collect::<Option<Vec<String>>>()
                    .ok_or_else(|| {
                        AwsError::member(
                            CANNOT_PARSE,
                            "findingArns",
                            "must be a list of strings".into(),
                        )
                    })?,
                Some(_) => {
                    return Err(AwsError::member(
                        CANNOT_PARSE,
                        "findingArns",
                        "must be a list of strings".into(),
                    ));
                }
            };
            proto::BatchGetCodeSnippetRequest { finding_arns }.encode_to_vec()
        }
    })
}

/// The REST-JSON answer (a JSON body) of an operation's gRPC answer message.
pub fn encode_response(operation: Operation, message: &[u8]) -> Result<Value, AwsError> {
    let unreadable = |e: prost::DecodeError| {
        tracing::error!(error = %e, operation = operation.name(), "the service's answer cannot be decoded");
        AwsError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerException",
            "internal error; see the sidecar's log",
        )
    };
    Ok(match operation {
        Operation::GetEncryptionKey => {
            let answer = proto::GetEncryptionKeyResponse::decode(message).map_err(unreadable)?;
            json!({"kmsKeyId": answer.kms_key_id})
        }
        // Empty structures in the model; the verification report has no place there.
        Operation::UpdateEncryptionKey | Operation::ResetEncryptionKey => json!({}),
        Operation::BatchGetCodeSnippet => {
            let answer = proto::BatchGetCodeSnippetResponse::decode(message).map_err(unreadable)?;
            let results: Vec<Value> = answer
                .code_snippet_results
                .into_iter()
                .map(|result| {
                    let mut object = Map::new();
                    object.insert("findingArn".into(), result.finding_arn.into());
                    object.insert("startLine".into(), result.start_line.into());
                    object.insert("endLine".into(), result.end_line.into());
                    object.insert(
                        "codeSnippet".into(),
                        result
                            .code_snippet
                            .into_iter()
                            .map(|line| json!({"content": line.content, "lineNumber": line.line_number}))
                            .collect(),
                    );
                    // The model's list has at least one fix: none is no member.
                    if !result.suggested_fixes.is_empty() {
                        object.insert(
                            "suggestedFixes".into(),
                            result
                                .suggested_fixes
                                .into_iter()
                                .map(|fix| json!({"description": fix.description, "code": fix.code}))
                                .collect(),
                        );
                    }
                    Value::Object(object)
                })
                .collect();
            let errors: Vec<Value> = answer
                .errors
                .into_iter()
                .map(|error| {
                    json!({
                        "findingArn": error.finding_arn,
                        "errorCode": snippet_error_code(error.error_code),
                        "errorMessage": error.error_message,
                    })
                })
                .collect();
            json!({"codeSnippetResults": results, "errors": errors})
        }
    })
}

/// The model's CodeSnippetErrorCode of the proto's.
fn snippet_error_code(code: i32) -> &'static str {
    use proto::CodeSnippetErrorCode as C;
    match C::try_from(code) {
        Ok(C::AccessDenied) => "ACCESS_DENIED",
        Ok(C::CodeSnippetNotFound) => "CODE_SNIPPET_NOT_FOUND",
        Ok(C::InvalidInput) => "INVALID_INPUT",
        Ok(C::InternalError | C::Unspecified) | Err(_) => "INTERNAL_ERROR",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn routes_follow_the_model_and_name_what_is_not_served() {
        assert_eq!(
            route("GET", "/encryptionkey/get"),
            Ok(Operation::GetEncryptionKey)
        );
        assert_eq!(
            route("POST", "/codesnippet/batchget"),
            Ok(Operation::BatchGetCodeSnippet)
        );
        let error = route("POST", "/findings/list").unwrap_err();
        assert_eq!(
            (error.status, error.code),
            (StatusCode::NOT_FOUND, "UnknownOperationException")
        );
        assert_eq!(
            error.message,
            "ListFindings is an Amazon Inspector operation this sidecar does not serve; it serves GetEncryptionKey, UpdateEncryptionKey, ResetEncryptionKey and BatchGetCodeSnippet"
        );
        assert!(
            route(
                "GET",
                "/tags/arn:aws:inspector2:us-east-1:111122223333:filter/x"
            )
            .unwrap_err()
            .message
            .starts_with("ListTagsForResource is")
        );
        assert_eq!(
            route("POST", "/encryptionkey/get").unwrap_err().message,
            "GetEncryptionKey is GET /encryptionkey/get, not POST"
        );
        assert!(
            route("GET", "/")
                .unwrap_err()
                .message
                .contains("is not an Amazon Inspector operation")
        );
    }

    #[test]
    fn requests_become_grpc_messages() {
        let get = decode_request(
            Operation::GetEncryptionKey,
            Some("scanType=CODE&resourceType=CODE_REPOSITORY"),
            b"",
        )
        .unwrap();
        assert_eq!(
            proto::GetEncryptionKeyRequest::decode(get.as_slice()).unwrap(),
            proto::GetEncryptionKeyRequest {
                scan_type: proto::ScanType::Code as i32,
                resource_type: proto::ResourceType::CodeRepository as i32,
                ..Default::default()
            }
        );
        let update = decode_request(
            Operation::UpdateEncryptionKey,
            None,
            br#"{"kmsKeyId": "alias/x", "scanType": "CODE", "resourceType": "Microsoft.Web/sites", "future": 1}"#,
        )
        .unwrap();
        let update = proto::UpdateEncryptionKeyRequest::decode(update.as_slice()).unwrap();
        assert_eq!(update.kms_key_id, "alias/x", "the service judges the ARN");
        assert_eq!(
            update.resource_type,
            proto::ResourceType::MicrosoftWebSites as i32
        );

        for (operation, query, body, reason, field, problem) in [
            (
                Operation::GetEncryptionKey,
                Some("scanType=CODE"),
                "",
                FIELD_VALIDATION_FAILED,
                "resourceType",
                "is required",
            ),
            (
                Operation::GetEncryptionKey,
                Some("scanType=CODE&scanType=CODE&resourceType=AWS_LAMBDA_FUNCTION"),
                "",
                CANNOT_PARSE,
                "scanType",
                "more than once",
            ),
            (
                Operation::GetEncryptionKey,
                Some("scanType=code&resourceType=AWS_LAMBDA_FUNCTION"),
                "",
                FIELD_VALIDATION_FAILED,
                "scanType",
                "`code` is not a ScanType (one of NETWORK, PACKAGE, CODE)",
            ),
            (
                Operation::UpdateEncryptionKey,
                None,
                r#"{"scanType": "CODE", "resourceType": "AWS_LAMBDA_FUNCTION"}"#,
                FIELD_VALIDATION_FAILED,
                "kmsKeyId",
                "is required",
            ),
            (
                Operation::UpdateEncryptionKey,
                None,
                r#"{"kmsKeyId": 7, "scanType": "CODE", "resourceType": "AWS_LAMBDA_FUNCTION"}"#,
                CANNOT_PARSE,
                "kmsKeyId",
                "must be a string",
            ),
            (
                Operation::ResetEncryptionKey,
                None,
                r#"{"scanType": "CODE", "resourceType": "LAMBDA"}"#,
                FIELD_VALIDATION_FAILED,
                "resourceType",
                "is not a ResourceType",
            ),
            (
                Operation::BatchGetCodeSnippet,
                None,
                r#"{"findingArns": "arn"}"#,
                CANNOT_PARSE,
                "findingArns",
                "list of strings",
            ),
            (
                Operation::BatchGetCodeSnippet,
                None,
                "{}",
                FIELD_VALIDATION_FAILED,
                "findingArns",
                "is required",
            ),
        ] {
            let error = decode_request(operation, query, body.as_bytes()).unwrap_err();
            assert_eq!(error.code, "ValidationException");
            assert_eq!(error.reason, Some(reason), "{body}");
            assert_eq!(error.fields.len(), 1, "{error:?}");
            assert_eq!(error.fields[0].0, field);
            assert!(error.fields[0].1.contains(problem), "{error:?}");
        }
        for body in ["[1]", "{", "\"x\""] {
            let error =
                decode_request(Operation::ResetEncryptionKey, None, body.as_bytes()).unwrap_err();
            assert_eq!(error.reason, Some(CANNOT_PARSE), "{body}");
            assert!(error.fields.is_empty());
        }
    }

    #[test]
    fn statuses_become_the_model_errors() {
        use tonic_types::{ErrorDetails, FieldViolation};
        let mut details = ErrorDetails::new();
        details.set_bad_request(vec![FieldViolation::new(
            "kms_key_id",
            "`alias/x` is an alias",
        )]);
        let invalid = tonic::Status::with_error_details(
            Code::InvalidArgument,
            "invalid request: kms_key_id: `alias/x` is an alias",
            details,
        );
        let error = AwsError::from_status(&invalid, Operation::UpdateEncryptionKey);
        assert_eq!(
            (error.status, error.code),
            (StatusCode::BAD_REQUEST, "ValidationException")
        );
        assert_eq!(
            error.body(),
            json!({"message": "invalid request: kms_key_id: `alias/x` is an alias", "reason": "FIELD_VALIDATION_FAILED", "fields": [{"name": "kmsKeyId", "message": "`alias/x` is an alias"}]})
        );
        let mut details = ErrorDetails::new();
        details.set_retry_info(Some(Duration::from_millis(100)));
        let shed =
            tonic::Status::with_error_details(Code::ResourceExhausted, "overloaded", details);
        let error = AwsError::from_status(&shed, Operation::GetEncryptionKey);
        assert_eq!(
            (error.status, error.code, error.retry_after),
            (
                StatusCode::TOO_MANY_REQUESTS,
                "ThrottlingException",
                Some(1)
            )
        );
        assert_eq!(error.body(), json!({"message": "overloaded"}));
        for (code, operation, status, aws) in [
            (
                Code::NotFound,
                Operation::GetEncryptionKey,
                StatusCode::NOT_FOUND,
                "ResourceNotFoundException",
            ),
            (
                Code::NotFound,
                Operation::BatchGetCodeSnippet,
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalServerException",
            ),
            (
                Code::PermissionDenied,
                Operation::ResetEncryptionKey,
                StatusCode::FORBIDDEN,
                "AccessDeniedException",
            ),
            (
                Code::FailedPrecondition,
                Operation::UpdateEncryptionKey,
                StatusCode::BAD_REQUEST,
                "ValidationException",
            ),
            (
                Code::Unavailable,
                Operation::GetEncryptionKey,
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalServerException",
            ),
            (
                Code::DeadlineExceeded,
                Operation::GetEncryptionKey,
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalServerException",
            ),
        ] {
            let error = AwsError::from_status(&tonic::Status::new(code, "m"), operation);
            assert_eq!((error.status, error.code), (status, aws), "{code:?}");
        }
    }

    #[test]
    fn door_requests_carry_their_scope() {
        let scope = CallScope {
            account_id: "222233334444",
            region: "eu-west-1",
        };
        let get = decode_request_in(
            Operation::GetEncryptionKey,
            Some("scanType=CODE&resourceType=AWS_LAMBDA_FUNCTION"),
            b"",
            scope,
        )
        .unwrap();
        let get = proto::GetEncryptionKeyRequest::decode(get.as_slice()).unwrap();
        assert_eq!(
            (get.account_id.as_str(), get.region.as_str()),
            ("222233334444", "eu-west-1")
        );
        let update = decode_request_in(
            Operation::UpdateEncryptionKey,
            None,
            br#"{"kmsKeyId": "k", "scanType": "CODE", "resourceType": "AWS_LAMBDA_FUNCTION"}"#,
            scope,
        )
        .unwrap();
        let update = proto::UpdateEncryptionKeyRequest::decode(update.as_slice()).unwrap();
        assert_eq!(
            (update.account_id.as_str(), update.region.as_str()),
            ("222233334444", "eu-west-1")
        );
        let reset = decode_request_in(
            Operation::ResetEncryptionKey,
            None,
            br#"{"scanType": "CODE", "resourceType": "AWS_LAMBDA_FUNCTION"}"#,
            CallScope::default(),
        )
        .unwrap();
        let reset = proto::ResetEncryptionKeyRequest::decode(reset.as_slice()).unwrap();
        assert_eq!((reset.account_id.as_str(), reset.region.as_str()), ("", ""));
    }

    #[test]
    fn a_scope_not_managed_is_a_validation_exception_naming_it() {
        use tonic_types::{ErrorDetails, FieldViolation};
        let message = "the sidecar does not manage account 222233334444 in ap-south-1; the scopes it manages are its own, those of its [[accounts]] configuration and those of its [organization] listing";
        let status = |field: &str| {
            let mut details = ErrorDetails::new();
            details.set_error_info(
                "SCOPE_NOT_MANAGED",
                "inspector-keyd",
                [
                    ("account_id".to_owned(), "222233334444".to_owned()),
                    ("region".to_owned(), "ap-south-1".to_owned()),
                ],
            );
            details.set_bad_request(vec![FieldViolation::new(field, message)]);
            tonic::Status::with_error_details(Code::InvalidArgument, message, details)
        };
        let error = AwsError::from_status(&status("region"), Operation::GetEncryptionKey);
        assert_eq!(
            (error.status, error.code, error.reason),
            (StatusCode::BAD_REQUEST, "ValidationException", Some(OTHER))
        );
        assert!(error.fields.is_empty(), "{error:?}");
        assert!(
            error.message.starts_with(message) && error.message.contains("--region"),
            "{}",
            error.message
        );
        let error = AwsError::from_status(&status("finding_arns"), Operation::BatchGetCodeSnippet);
        assert_eq!(error.reason, Some(FIELD_VALIDATION_FAILED));
        assert_eq!(error.fields[0].0, "findingArns");
    }

    #[test]
    fn snippets_become_the_model_json() {
        let answer = proto::BatchGetCodeSnippetResponse {
            code_snippet_results: vec![proto::CodeSnippetResult {
                finding_arn: "arn:f".into(),
                start_line: 3,
                end_line: 3,
                code_snippet: vec![proto::CodeLine {
                    content: "x = 1".into(),
                    line_number: 3,
                }],
                suggested_fixes: Vec::new(),
            }],
            errors: vec![proto::CodeSnippetError {
                finding_arn: "arn:g".into(),
                error_code: proto::CodeSnippetErrorCode::CodeSnippetNotFound as i32,
                error_message: "none".into(),
            }],
        };
        assert_eq!(
            encode_response(Operation::BatchGetCodeSnippet, &answer.encode_to_vec()).unwrap(),
            json!({
                "codeSnippetResults": [{"findingArn": "arn:f", "startLine": 3, "endLine": 3, "codeSnippet": [{"content": "x = 1", "lineNumber": 3}]}],
                "errors": [{"findingArn": "arn:g", "errorCode": "CODE_SNIPPET_NOT_FOUND", "errorMessage": "none"}],
            })
        );
    }
}
