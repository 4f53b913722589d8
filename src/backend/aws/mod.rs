//! The aws backend: Amazon Inspector's encryption-key operations and the KMS and IAM reads
//! verification needs, through the official AWS SDK (default credential chain, bounded
//! timeouts, the SDK's standard retry). Errors are classified once; AWS's own text is
//! logged, never returned to callers.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use aws_config::{BehaviorVersion, Region, retry::RetryConfig, timeout::TimeoutConfig};
use aws_sdk_inspector2::types::{ResourceType as AwsResourceType, ScanType as AwsScanType};
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::date_time::Format;

mod errors;
mod iam;

use errors::{classify, describe_sdk_error};
use iam::IamPolicies;

use super::{Backend, BackendError, PrincipalPolicies};
use crate::{
    config::{AwsConfig, Placement},
    domain::{
        CodeLine, CodeSnippet, CodeSnippets, FindingArn, KeyArn, Scope, ScopedTarget, SnippetError,
        SnippetErrorCode, SuggestedFix, Target, is_account_id, is_region_name,
    },
    verify::{KeyMetadata, MultiRegionConfiguration, MultiRegionKey},
};

/// Why the aws backend could not start.
#[derive(Debug, thiserror::Error)]
pub enum AwsSetupError {
    #[error(
        "no AWS Region: set `region` in the configuration (or INSPECTOR_KEYD_REGION), or AWS_REGION / a profile's region"
    )]
    NoRegion,
    #[error("the AWS Region `{0}` is not a Region name")]
    BadRegion(String),
    #[error(
        "no usable AWS credentials ({0}); the default chain reads AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, web identity (IRSA), EKS Pod Identity or instance metadata"
    )]
    NoCredentials(String),
    #[error(
        "cannot determine the AWS account with STS GetCallerIdentity ({0}); set `account_id` in the configuration"
    )]
    NoAccount(String),
}

pub struct AwsBackend {
    /// The account and Region its clients act in, the only scope it serves so far.
    own: Scope,
    inspector: aws_sdk_inspector2::Client,
    kms: aws_sdk_kms::Client,
    iam: IamPolicies,
}

impl AwsBackend {
    /// Loads the SDK configuration, checks the credentials, and finds the Region and
    /// account (configured, else from the chain and STS). Principals' policies read from
    /// IAM are kept for `policy_ttl` (the drift interval).
    pub async fn connect(
        settings: &AwsConfig,
        region: Option<&str>,
        account_id: Option<&str>,
        policy_ttl: Duration,
        metrics: crate::metrics::Metrics,
    ) -> Result<(AwsBackend, Placement), AwsSetupError> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(settings.connect_timeout)
                    .operation_timeout(settings.operation_timeout)
                    .build(),
            )
            .retry_config(RetryConfig::standard().with_max_attempts(settings.max_attempts));
        if let Some(region) = region {
            loader = loader.region(Region::new(region.to_owned()));
        }
        let shared = loader.load().await;
        let region = shared
            .region()
            .map(|r| r.to_string())
            .ok_or(AwsSetupError::NoRegion)?;
        if !is_region_name(&region) {
            return Err(AwsSetupError::BadRegion(region));
        }
        let provider = shared
            .credentials_provider()
            .ok_or_else(|| AwsSetupError::NoCredentials("no credentials provider".into()))?;
        aws_credential_types::provider::ProvideCredentials::provide_credentials(&provider)
            .await
            .map_err(|e| AwsSetupError::NoCredentials(e.to_string()))?;

        let account_id = match account_id {
            Some(account) => account.to_owned(),
            None => {
                let mut sts = aws_sdk_sts::config::Builder::from(&shared);
                if let Some(url) = &settings.sts_endpoint {
                    sts = sts.endpoint_url(url);
                }
                let identity = aws_sdk_sts::Client::from_conf(sts.build())
                    .get_caller_identity()
                    .send()
                    .await
                    .map_err(|e| AwsSetupError::NoAccount(describe_sdk_error(&e)))?;
                identity
                    .account()
                    .filter(|a| is_account_id(a))
                    .map(str::to_owned)
                    .ok_or_else(|| AwsSetupError::NoAccount("no account in the answer".into()))?
            }
        };

        let mut inspector = aws_sdk_inspector2::config::Builder::from(&shared);
        if let Some(url) = &settings.inspector2_endpoint {
            inspector = inspector.endpoint_url(url);
        }
        let mut kms = aws_sdk_kms::config::Builder::from(&shared);
        if let Some(url) = &settings.kms_endpoint {
            kms = kms.endpoint_url(url);
        }
        let mut iam = aws_sdk_iam::config::Builder::from(&shared);
        if let Some(url) = &settings.iam_endpoint {
            iam = iam.endpoint_url(url);
        }
        Ok((
            AwsBackend {
                own: Scope::of(&account_id, &region),
                inspector: aws_sdk_inspector2::Client::from_conf(inspector.build()),
                kms: aws_sdk_kms::Client::from_conf(kms.build()),
                iam: IamPolicies::new(
                    aws_sdk_iam::Client::from_conf(iam.build()),
                    policy_ttl,
                    metrics,
                ),
            },
            Placement { region, account_id },
        ))
    }
}

impl AwsBackend {
    /// `target`'s (scan type, resource type) when it is in the scope the clients act in
    /// (the configuration refuses other accounts on this backend, so another is a fault).
    fn own_target(&self, target: ScopedTarget) -> Result<Target, BackendError> {
        if target.scope == self.own {
            Ok(target.target)
        } else {
            Err(BackendError::internal(format!(
                "the aws backend serves {} only, not {target}",
                self.own
            )))
        }
    }
}

fn scan_type(target: Target) -> AwsScanType {
    AwsScanType::from(target.scan_type().as_aws_str())
}

fn resource_type(target: Target) -> AwsResourceType {
    AwsResourceType::from(target.resource_type().as_aws_str())
}

fn date(value: Option<&aws_smithy_types::DateTime>) -> Option<serde_json::Value> {
    value
        .and_then(|d| d.fmt(Format::DateTime).ok())
        .map(serde_json::Value::String)
}

fn region_key(key: &aws_sdk_kms::types::MultiRegionKey) -> MultiRegionKey {
    MultiRegionKey {
        arn: key.arn().unwrap_or_default().to_owned(),
        region: key.region().unwrap_or_default().to_owned(),
    }
}

/// The SDK's key metadata in the describe-key shape the verifier reads.
fn key_metadata(m: &aws_sdk_kms::types::KeyMetadata) -> KeyMetadata {
    let name = |value: Option<&str>| value.unwrap_or_default().to_owned();
    KeyMetadata {
        aws_account_id: name(m.aws_account_id()),
        key_id: m.key_id().to_owned(),
        arn: name(m.arn()),
        creation_date: date(m.creation_date()),
        enabled: m.enabled(),
        description: name(m.description()),
        key_usage: name(m.key_usage().map(|u| u.as_str())),
        key_state: name(m.key_state().map(|s| s.as_str())),
        deletion_date: date(m.deletion_date()),
        origin: name(m.origin().map(|o| o.as_str())),
        key_manager: name(m.key_manager().map(|k| k.as_str())),
        key_spec: name(m.key_spec().map(|k| k.as_str())),
        encryption_algorithms: m
            .encryption_algorithms()
            .iter()
            .map(|a| a.as_str().to_owned())
            .collect(),
        signing_algorithms: m
            .signing_algorithms()
            .iter()
            .map(|a| a.as_str().to_owned())
            .collect(),
        multi_region: m.multi_region().unwrap_or(false),
        multi_region_configuration: m.multi_region_configuration().map(|c| {
            MultiRegionConfiguration {
                multi_region_key_type: name(c.multi_region_key_type().map(|t| t.as_str())),
                primary_key: c.primary_key().map(region_key),
                replica_keys: c.replica_keys().iter().map(region_key).collect(),
            }
        }),
    }
}

#[async_trait]
impl Backend for AwsBackend {
    async fn get_encryption_key(
        &self,
        target: ScopedTarget,
    ) -> Result<Option<String>, BackendError> {
        let target = self.own_target(target)?;
        let result = self
            .inspector
            .get_encryption_key()
            .scan_type(scan_type(target))
            .resource_type(resource_type(target))
            .send()
            .await;
        match result {
            Ok(output) => Ok(Some(output.kms_key_id().to_owned())),
            // Inspector's way of saying the AWS owned key is in use.
            Err(SdkError::ServiceError(context))
                if context.err().is_resource_not_found_exception() =>
            {
                Ok(None)
            }
            Err(error) => Err(classify("GetEncryptionKey", error)),
        }
    }

    async fn update_encryption_key(
        &self,
        target: ScopedTarget,
        key: &KeyArn,
    ) -> Result<(), BackendError> {
        let target = self.own_target(target)?;
        self.inspector
            .update_encryption_key()
            .kms_key_id(key.as_str())
            .scan_type(scan_type(target))
            .resource_type(resource_type(target))
            .send()
            .await
            .map(drop)
            .map_err(|e| classify("UpdateEncryptionKey", e))
    }

    async fn reset_encryption_key(&self, target: ScopedTarget) -> Result<(), BackendError> {
        let target = self.own_target(target)?;
        self.inspector
            .reset_encryption_key()
            .scan_type(scan_type(target))
            .resource_type(resource_type(target))
            .send()
            .await
            .map(drop)
            .map_err(|e| classify("ResetEncryptionKey", e))
    }

    async fn describe_key(&self, key: &KeyArn) -> Result<KeyMetadata, BackendError> {
        let output = self
            .kms
            .describe_key()
            .key_id(key.as_str())
            .send()
            .await
            .map_err(|e| classify("DescribeKey", e))?;
        output
            .key_metadata()
            .map(key_metadata)
            .ok_or_else(|| BackendError::internal("DescribeKey answered without key metadata"))
    }

    async fn get_key_policy(&self, key: &KeyArn) -> Result<String, BackendError> {
        let output = self
            .kms
            .get_key_policy()
            .key_id(key.as_str())
            .policy_name("default")
            .send()
            .await
            .map_err(|e| classify("GetKeyPolicy", e))?;
        Ok(output.policy().unwrap_or_default().to_owned())
    }

    async fn batch_get_code_snippet(
        &self,
        findings: &[FindingArn],
    ) -> Result<CodeSnippets, BackendError> {
        let output = self
            .inspector
            .batch_get_code_snippet()
            .set_finding_arns(Some(
                findings.iter().map(|f| f.as_str().to_owned()).collect(),
            ))
            .send()
            .await
            .map_err(|e| classify("BatchGetCodeSnippet", e))?;
        let mut snippets = CodeSnippets::default();
        for result in output.code_snippet_results() {
            let Some(finding_arn) = result.finding_arn() else {
                tracing::warn!("BatchGetCodeSnippet answered a result without a finding ARN");
                continue;
            };
            snippets.results.push(CodeSnippet {
                finding_arn: finding_arn.to_owned(),
                start_line: result.start_line().unwrap_or_default(),
                end_line: result.end_line().unwrap_or_default(),
                lines: result
                    .code_snippet()
                    .iter()
                    .map(|line| CodeLine {
                        content: line.content().to_owned(),
                        line_number: line.line_number(),
                    })
                    .collect(),
                suggested_fixes: result
                    .suggested_fixes()
                    .iter()
                    .map(|fix| SuggestedFix {
                        description: fix.description().unwrap_or_default().to_owned(),
                        code: fix.code().unwrap_or_default().to_owned(),
                    })
                    .collect(),
            });
        }
        for error in output.errors() {
            let code = SnippetErrorCode::from_aws_str(error.error_code().as_str());
            // AWS's text goes to the log; the caller gets the sidecar's own words.
            tracing::info!(
                finding = error.finding_arn(),
                code = error.error_code().as_str(),
                detail = error.error_message(),
                "BatchGetCodeSnippet: a finding's snippet was not returned"
            );
            snippets.errors.push(SnippetError {
                finding_arn: error.finding_arn().to_owned(),
                code,
                message: code.describe().to_owned(),
            });
        }
        Ok(snippets)
    }

    async fn principal_policies(
        &self,
        principal_arn: &str,
    ) -> Result<Option<Arc<PrincipalPolicies>>, BackendError> {
        self.iam.get(principal_arn).await.map(Some)
    }
}
