//! BatchGetCodeSnippet and the local code-scanning service: validation, the backend call
//! and the mapping between the domain's snippets and the messages. Snippets are never
//! cached and never logged.

use tonic::{Request, Response, Status};

use super::{ServiceError, audit_subject, validation};
use crate::{
    backend::local::{LocalScanning, ScanningState},
    cache::KeyCache,
    domain::{CodeSnippet, CodeSnippets, FindingArn, Scope, ScopedTarget, SnippetErrorCode},
    proto::{self, local_code_scanning_service_server::LocalCodeScanningService},
};

impl From<CodeSnippet> for proto::CodeSnippetResult {
    fn from(snippet: CodeSnippet) -> proto::CodeSnippetResult {
        proto::CodeSnippetResult {
            finding_arn: snippet.finding_arn,
            start_line: snippet.start_line,
            end_line: snippet.end_line,
            code_snippet: snippet
                .lines
                .into_iter()
                .map(|line| proto::CodeLine {
                    content: line.content,
                    line_number: line.line_number,
                })
                .collect(),
            suggested_fixes: snippet
                .suggested_fixes
                .into_iter()
                .map(|fix| proto::SuggestedFix {
                    description: fix.description,
                    code: fix.code,
                })
                .collect(),
        }
    }
}

fn error_code(code: SnippetErrorCode) -> proto::CodeSnippetErrorCode {
    match code {
        SnippetErrorCode::InternalError => proto::CodeSnippetErrorCode::InternalError,
        SnippetErrorCode::AccessDenied => proto::CodeSnippetErrorCode::AccessDenied,
        SnippetErrorCode::CodeSnippetNotFound => proto::CodeSnippetErrorCode::CodeSnippetNotFound,
        SnippetErrorCode::InvalidInput => proto::CodeSnippetErrorCode::InvalidInput,
    }
}

impl From<CodeSnippets> for proto::BatchGetCodeSnippetResponse {
    fn from(snippets: CodeSnippets) -> proto::BatchGetCodeSnippetResponse {
        proto::BatchGetCodeSnippetResponse {
            code_snippet_results: snippets.results.into_iter().map(Into::into).collect(),
            errors: snippets
                .errors
                .into_iter()
                .map(|error| proto::CodeSnippetError {
                    finding_arn: error.finding_arn,
                    error_code: error_code(error.code) as i32,
                    error_message: error.message,
                })
                .collect(),
        }
    }
}

/// Splits `findings` into those of `account_id` (all of them when `None`) and an
/// ACCESS_DENIED error for each other one, once: an AWS-protocol access key acts in its
/// account only, and Inspector answers a finding its caller may not read in the batch's
/// errors, so one foreign ARN does not cost the caller the others.
pub fn split_by_account(
    findings: Vec<FindingArn>,
    account_id: Option<&str>,
) -> (Vec<FindingArn>, Vec<proto::CodeSnippetError>) {
    let Some(account_id) = account_id else {
        return (findings, Vec::new());
    };
    let (kept, mut foreign): (Vec<FindingArn>, Vec<FindingArn>) = findings
        .into_iter()
        .partition(|finding| finding.account_id() == account_id);
    foreign.sort();
    foreign.dedup();
    let denied = foreign
        .into_iter()
        .map(|finding| proto::CodeSnippetError {
            error_code: proto::CodeSnippetErrorCode::AccessDenied as i32,
            error_message: format!(
                "the finding is in account {}; the access key acts in account {account_id} only",
                finding.account_id()
            ),
            finding_arn: finding.as_str().to_owned(),
        })
        .collect();
    (kept, denied)
}

/// BatchGetCodeSnippet of validated findings, through the cache layer, which never keeps
/// them.
pub async fn batch_get(
    cache: &KeyCache,
    findings: &[FindingArn],
) -> Result<proto::BatchGetCodeSnippetResponse, ServiceError> {
    Ok(cache.batch_get_code_snippet(findings).await?.into())
}

/// The local code-scanning API over the local backend's scanning service.
#[derive(Clone)]
pub struct LocalCodeScanningApi {
    scanning: LocalScanning,
}

impl LocalCodeScanningApi {
    pub fn new(scanning: LocalScanning) -> LocalCodeScanningApi {
        LocalCodeScanningApi { scanning }
    }

    /// The managed scope a request names, when the caller may act there.
    fn scope(
        &self,
        caller: Option<&crate::rpc::CallerContext>,
        account_id: &str,
        region: &str,
    ) -> Result<Scope, ServiceError> {
        let mut violations = Vec::new();
        let requested = validation::requested_scope(account_id, region, &mut violations);
        if !violations.is_empty() {
            return Err(ServiceError::InvalidArgument(violations));
        }
        super::managed_scope(self.scanning.scopes(), caller, requested, false)
    }
}

/// The audit line of a code-scanning change names its target (scan type CODE).
fn audit_code_scanning<T>(request: &Request<T>, resource_type: i32) {
    audit_subject(
        request,
        "",
        Some(proto::ScanType::Code as i32),
        Some(resource_type),
    );
}

#[tonic::async_trait]
impl LocalCodeScanningService for LocalCodeScanningApi {
    async fn record_code_finding(
        &self,
        request: Request<proto::RecordCodeFindingRequest>,
    ) -> Result<Response<proto::RecordCodeFindingResponse>, Status> {
        audit_code_scanning(&request, request.get_ref().resource_type);
        let r = request.get_ref();
        let scope = self.scope(request.extensions().get(), &r.account_id, &r.region)?;
        let (target, snippet) = validation::record_request(r, || {
            FindingArn::generate(scope.region(), scope.account_id())
        })
        .map_err(ServiceError::from)?;
        let finding_arn = snippet.finding_arn.clone();
        if let Ok(given) = FindingArn::parse(&finding_arn)
            && (given.account_id(), given.region()) != (scope.account_id(), scope.region())
        {
            return Err(
                ServiceError::InvalidArgument(vec![validation::FieldViolation::new(
                    "finding.finding_arn",
                    format!(
                        "`{finding_arn}` is not a finding of {scope}, the scope the request names"
                    ),
                )])
                .into(),
            );
        }
        let target = ScopedTarget::new(scope, target);
        self.scanning
            .record(target, snippet)
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(proto::RecordCodeFindingResponse {
            finding_arn,
        }))
    }

    async fn disable_code_scanning(
        &self,
        request: Request<proto::DisableCodeScanningRequest>,
    ) -> Result<Response<proto::DisableCodeScanningResponse>, Status> {
        let r = request.get_ref();
        audit_code_scanning(&request, r.resource_type);
        let scope = self.scope(request.extensions().get(), &r.account_id, &r.region)?;
        let target =
            validation::code_scanning_target(r.resource_type).map_err(ServiceError::from)?;
        let target = ScopedTarget::new(scope, target);
        let deleted = self
            .scanning
            .disable(target)
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(proto::DisableCodeScanningResponse {
            deleted_snippets: u32::try_from(deleted).unwrap_or(u32::MAX),
        }))
    }

    async fn describe_code_scanning(
        &self,
        request: Request<proto::DescribeCodeScanningRequest>,
    ) -> Result<Response<proto::DescribeCodeScanningResponse>, Status> {
        let r = request.get_ref();
        let scope = self.scope(request.extensions().get(), &r.account_id, &r.region)?;
        let target =
            validation::code_scanning_target(r.resource_type).map_err(ServiceError::from)?;
        let target = ScopedTarget::new(scope, target);
        let state: ScanningState = self
            .scanning
            .describe(target)
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(proto::DescribeCodeScanningResponse {
            kms_key_id: state.kms_key_arn.unwrap_or_default(),
            data_key_id: state.data_key_id.unwrap_or_default(),
            grant_id: state.grant_id.unwrap_or_default(),
            snippet_count: u32::try_from(state.snippet_count).unwrap_or(u32::MAX),
        }))
    }
}
