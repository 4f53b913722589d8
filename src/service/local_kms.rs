//! `LocalKmsService`: the local KMS emulation, served only with the local backend.

use tonic::{Request, Response, Status};

use super::ServiceError;
use crate::{
    backend::local::{AliasEntry, CreateKeyInput, LocalKms},
    proto::{self, local_kms_service_server::LocalKmsService},
    verify::{KeyMetadata, MultiRegionKey},
};

/// The local KMS API over the local backend's KMS.
#[derive(Clone)]
pub struct LocalKmsApi {
    kms: LocalKms,
}

impl LocalKmsApi {
    pub fn new(kms: LocalKms) -> LocalKmsApi {
        LocalKmsApi { kms }
    }
}

type Reply<T> = Result<Response<T>, Status>;

fn reply<T>(result: Result<T, impl Into<ServiceError>>) -> Reply<T> {
    result
        .map(Response::new)
        .map_err(|e| Status::from(e.into()))
}

fn timestamp(value: Option<serde_json::Value>) -> Option<prost_types::Timestamp> {
    let text = value?;
    let parsed = time::OffsetDateTime::parse(
        text.as_str()?,
        &time::format_description::well_known::Rfc3339,
    )
    .ok()?;
    Some(prost_types::Timestamp {
        seconds: parsed.unix_timestamp(),
        nanos: 0,
    })
}

fn unix_timestamp(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos: 0 })
}

impl From<AliasEntry> for proto::AliasListEntry {
    fn from(a: AliasEntry) -> proto::AliasListEntry {
        proto::AliasListEntry {
            alias_name: a.alias_name,
            alias_arn: a.alias_arn,
            target_key_id: a.target_key_id,
            creation_date: unix_timestamp(a.creation_date),
            last_updated_date: unix_timestamp(a.last_updated_date),
        }
    }
}

fn region_key(key: MultiRegionKey) -> proto::MultiRegionKey {
    proto::MultiRegionKey {
        arn: key.arn,
        region: key.region,
    }
}

impl From<KeyMetadata> for proto::KeyMetadata {
    fn from(m: KeyMetadata) -> proto::KeyMetadata {
        proto::KeyMetadata {
            aws_account_id: m.aws_account_id,
            key_id: m.key_id,
            arn: m.arn,
            creation_date: timestamp(m.creation_date),
            enabled: m.enabled,
            description: m.description,
            key_usage: m.key_usage,
            key_state: m.key_state,
            deletion_date: timestamp(m.deletion_date),
            origin: m.origin,
            key_manager: m.key_manager,
            key_spec: m.key_spec,
            encryption_algorithms: m.encryption_algorithms,
            signing_algorithms: m.signing_algorithms,
            multi_region: m.multi_region,
            multi_region_configuration: m.multi_region_configuration.map(|c| {
                proto::MultiRegionConfiguration {
                    multi_region_key_type: c.multi_region_key_type,
                    primary_key: c.primary_key.map(region_key),
                    replica_keys: c.replica_keys.into_iter().map(region_key).collect(),
                }
            }),
        }
    }
}

#[tonic::async_trait]
impl LocalKmsService for LocalKmsApi {
    async fn create_key(
        &self,
        request: Request<proto::CreateKeyRequest>,
    ) -> Reply<proto::CreateKeyResponse> {
        let r = request.into_inner();
        let input = CreateKeyInput {
            key_spec: r.key_spec,
            key_usage: r.key_usage,
            multi_region: r.multi_region,
            policy: r.policy,
            description: r.description,
            region: r.region,
            account_id: r.account_id,
        };
        reply(
            self.kms
                .create_key(input)
                .await
                .map(|m| proto::CreateKeyResponse {
                    key_metadata: Some(m.into()),
                }),
        )
    }

    async fn describe_key(
        &self,
        request: Request<proto::DescribeKeyRequest>,
    ) -> Reply<proto::DescribeKeyResponse> {
        let r = request.into_inner();
        reply(
            self.kms
                .describe_key(r.key_id)
                .await
                .map(|m| proto::DescribeKeyResponse {
                    key_metadata: Some(m.into()),
                }),
        )
    }

    async fn list_keys(
        &self,
        _request: Request<proto::ListKeysRequest>,
    ) -> Reply<proto::ListKeysResponse> {
        reply(self.kms.list_keys().await.map(|keys| {
            proto::ListKeysResponse {
                keys: keys
                    .into_iter()
                    .map(|(key_id, key_arn)| proto::KeyListEntry { key_id, key_arn })
                    .collect(),
            }
        }))
    }

    async fn get_key_policy(
        &self,
        request: Request<proto::GetKeyPolicyRequest>,
    ) -> Reply<proto::GetKeyPolicyResponse> {
        let r = request.into_inner();
        reply(
            self.kms
                .get_key_policy(r.key_id)
                .await
                .map(|policy| proto::GetKeyPolicyResponse {
                    policy,
                    policy_name: "default".into(),
                }),
        )
    }

    async fn put_key_policy(
        &self,
        request: Request<proto::PutKeyPolicyRequest>,
    ) -> Reply<proto::PutKeyPolicyResponse> {
        super::audit_subject(&request, &request.get_ref().key_id, None, None);
        let r = request.into_inner();
        reply(
            self.kms
                .put_key_policy(r.key_id, r.policy)
                .await
                .map(|()| proto::PutKeyPolicyResponse {}),
        )
    }

    async fn enable_key(
        &self,
        request: Request<proto::EnableKeyRequest>,
    ) -> Reply<proto::EnableKeyResponse> {
        super::audit_subject(&request, &request.get_ref().key_id, None, None);
        let r = request.into_inner();
        reply(
            self.kms
                .enable_key(r.key_id)
                .await
                .map(|()| proto::EnableKeyResponse {}),
        )
    }

    async fn disable_key(
        &self,
        request: Request<proto::DisableKeyRequest>,
    ) -> Reply<proto::DisableKeyResponse> {
        super::audit_subject(&request, &request.get_ref().key_id, None, None);
        let r = request.into_inner();
        reply(
            self.kms
                .disable_key(r.key_id)
                .await
                .map(|()| proto::DisableKeyResponse {}),
        )
    }

    async fn schedule_key_deletion(
        &self,
        request: Request<proto::ScheduleKeyDeletionRequest>,
    ) -> Reply<proto::ScheduleKeyDeletionResponse> {
        super::audit_subject(&request, &request.get_ref().key_id, None, None);
        let r = request.into_inner();
        reply(
            self.kms
                .schedule_key_deletion(r.key_id, r.pending_window_in_days)
                .await
                .map(|m| proto::ScheduleKeyDeletionResponse {
                    key_metadata: Some(m.into()),
                }),
        )
    }

    async fn cancel_key_deletion(
        &self,
        request: Request<proto::CancelKeyDeletionRequest>,
    ) -> Reply<proto::CancelKeyDeletionResponse> {
        super::audit_subject(&request, &request.get_ref().key_id, None, None);
        let r = request.into_inner();
        reply(self.kms.cancel_key_deletion(r.key_id).await.map(|m| {
            proto::CancelKeyDeletionResponse {
                key_metadata: Some(m.into()),
            }
        }))
    }

    async fn replicate_key(
        &self,
        request: Request<proto::ReplicateKeyRequest>,
    ) -> Reply<proto::ReplicateKeyResponse> {
        super::audit_subject(&request, &request.get_ref().key_id, None, None);
        let r = request.into_inner();
        reply(
            self.kms
                .replicate_key(r.key_id, r.replica_region, r.policy)
                .await
                .map(|m| proto::ReplicateKeyResponse {
                    replica_key_metadata: Some(m.into()),
                }),
        )
    }

    async fn list_grants(
        &self,
        request: Request<proto::ListGrantsRequest>,
    ) -> Reply<proto::ListGrantsResponse> {
        let r = request.into_inner();
        reply(self.kms.list_grants(r.key_id).await.map(|grants| {
            proto::ListGrantsResponse {
                grants: grants
                    .into_iter()
                    .map(|g| proto::GrantListEntry {
                        key_id: g.key_arn,
                        grant_id: g.grant_id,
                        name: g.name,
                        creation_date: unix_timestamp(g.creation_date),
                        grantee_principal: g.grantee_principal,
                        retiring_principal: g.retiring_principal,
                        issuing_account: g.issuing_account,
                        operations: g.operations,
                    })
                    .collect(),
            }
        }))
    }

    async fn create_alias(
        &self,
        request: Request<proto::CreateAliasRequest>,
    ) -> Reply<proto::CreateAliasResponse> {
        super::audit_subject(&request, &request.get_ref().target_key_id, None, None);
        let r = request.into_inner();
        reply(
            self.kms
                .create_alias(r.alias_name, r.target_key_id)
                .await
                .map(|()| proto::CreateAliasResponse {}),
        )
    }

    async fn delete_alias(
        &self,
        request: Request<proto::DeleteAliasRequest>,
    ) -> Reply<proto::DeleteAliasResponse> {
        super::audit_subject(&request, &request.get_ref().alias_name, None, None);
        let r = request.into_inner();
        reply(
            self.kms
                .delete_alias(r.alias_name, r.account_id, r.region)
                .await
                .map(|()| proto::DeleteAliasResponse {}),
        )
    }

    async fn list_aliases(
        &self,
        request: Request<proto::ListAliasesRequest>,
    ) -> Reply<proto::ListAliasesResponse> {
        let r = request.into_inner();
        reply(
            self.kms
                .list_aliases(r.key_id, r.account_id, r.region)
                .await
                .map(|aliases| proto::ListAliasesResponse {
                    aliases: aliases.into_iter().map(Into::into).collect(),
                }),
        )
    }
}
