//! Verification profiles: for each way Inspector's scanning partner uses the key, the
//! KMS requests that must be allowed, and the policy statements that allow them.

use serde_json::{Value, json};

use super::{
    eval::{Caller, Request},
    policy::DocumentKind,
};
use crate::domain::{IamPrincipal, partition_of};

/// A named set of requirements a key's policies must meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Profile {
    /// The seed's system: CodeGuru Security requests a grant on the key and uses it, via
    /// Inspector. The principal's identity policy holds the two statements.
    CodeguruGrants,
    /// Current Lambda code scanning: Amazon Q and the Inspector role use the key through
    /// the key policy.
    AmazonQLambda,
    /// Code Security (code repositories): Amazon Q and the Inspector role, key policy.
    AmazonQCodeRepository,
}

impl Profile {
    pub const ALL: [Profile; 3] = [
        Profile::CodeguruGrants,
        Profile::AmazonQLambda,
        Profile::AmazonQCodeRepository,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Profile::CodeguruGrants => "codeguru-grants",
            Profile::AmazonQLambda => "amazon-q-lambda",
            Profile::AmazonQCodeRepository => "amazon-q-code-repository",
        }
    }

    pub fn parse(name: &str) -> Option<Profile> {
        Profile::ALL.into_iter().find(|p| p.name() == name)
    }

    /// `codeguru-grants, amazon-q-lambda, amazon-q-code-repository`, for messages.
    pub fn names() -> String {
        Profile::ALL.map(Profile::name).join(", ")
    }

    /// The document the profile's statements belong in.
    pub fn document_kind(self) -> DocumentKind {
        match self {
            Profile::CodeguruGrants => DocumentKind::IdentityPolicy,
            Profile::AmazonQLambda | Profile::AmazonQCodeRepository => DocumentKind::KeyPolicy,
        }
    }
}

/// The account, Region and principal a profile is instantiated for.
#[derive(Debug, Clone, Copy)]
pub struct Params<'a> {
    pub region: &'a str,
    pub account_id: &'a str,
    /// The IAM principal that calls Inspector (and, through it, KMS).
    pub principal_arn: &'a str,
    /// The key the requests are for.
    pub key_arn: &'a str,
}

/// A request the key's policies must allow, and which rendered statement allows it.
#[derive(Debug, Clone)]
pub struct Required {
    pub request: Request,
    pub statement: usize,
}

/// A profile instantiated for one account, Region and principal.
#[derive(Debug, Clone)]
pub struct Requirements {
    /// The statements that meet the requirements, in render order.
    pub statements: Vec<Value>,
    pub required: Vec<Required>,
}

/// The six operations the seed's grant is limited to.
pub const GRANT_OPERATIONS: [&str; 6] = [
    "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext",
    "Encrypt",
    "Decrypt",
    "RetireGrant",
    "DescribeKey",
];

/// Every KMS grant operation, for probing grants broader than needed.
pub const ALL_GRANT_OPERATIONS: [&str; 17] = [
    "Decrypt",
    "Encrypt",
    "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext",
    "ReEncryptFrom",
    "ReEncryptTo",
    "Sign",
    "Verify",
    "GetPublicKey",
    "CreateGrant",
    "RetireGrant",
    "DescribeKey",
    "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext",
    "GenerateMac",
    "VerifyMac",
    "DeriveSharedSecret",
];

const Q_SERVICE: &str = "q.amazonaws.com";
const Q_DATA_ACTIONS: [&str; 4] = [
    "kms:Encrypt",
    "kms:Decrypt",
    "kms:GenerateDataKeyWithoutPlaintext",
    "kms:GenerateDataKey",
];

fn ctx(pairs: &[(&str, &str)]) -> Vec<(String, Vec<String>)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), vec![(*v).to_owned()]))
        .collect()
}

/// The account that owns the key (the key ARN's), or the principal's when no key is known.
fn key_account<'a>(p: &Params<'a>) -> &'a str {
    p.key_arn
        .split(':')
        .nth(4)
        .filter(|a| !a.is_empty())
        .unwrap_or(p.account_id)
}

/// The context every request that the principal's credentials make through `via` (a
/// forward access session of that service) carries. Each key, its value and its source are
/// listed in docs/verification.md ("The request context").
fn principal_context(p: &Params<'_>, via: &str) -> Vec<(String, Vec<String>)> {
    let user_name = match IamPrincipal::parse(p.principal_arn) {
        Some(IamPrincipal::User(name)) => Some(name),
        _ => None,
    };
    let mut context = ctx(&[
        ("aws:PrincipalArn", p.principal_arn),
        ("aws:PrincipalAccount", p.account_id),
        (
            "aws:PrincipalType",
            if user_name.is_some() {
                "User"
            } else {
                "AssumedRole"
            },
        ),
        ("aws:PrincipalIsAWSService", "false"),
        ("aws:ViaAWSService", "true"),
        ("aws:SecureTransport", "true"),
        ("aws:RequestedRegion", p.region),
        ("aws:ResourceAccount", key_account(p)),
        ("kms:CallerAccount", p.account_id),
        ("kms:ViaService", via),
    ]);
    if let Some(name) = user_name {
        context.extend(ctx(&[("aws:username", name)]));
    }
    context
}

/// The context of a request the service principal `service` makes itself, for the resource
/// `source_arn` of `source_account`.
fn service_context(
    p: &Params<'_>,
    service: &str,
    source_account: &str,
    source_arn: &str,
) -> Vec<(String, Vec<String>)> {
    ctx(&[
        ("aws:PrincipalServiceName", service),
        ("aws:PrincipalIsAWSService", "true"),
        ("aws:SecureTransport", "true"),
        ("aws:RequestedRegion", p.region),
        ("aws:ResourceAccount", key_account(p)),
        ("aws:SourceAccount", source_account),
        ("aws:SourceArn", source_arn),
    ])
}

/// `kms:EncryptionContext:<key>` for each pair, and `kms:EncryptionContextKeys`.
fn encryption_context(pairs: &[(&str, &str)]) -> Vec<(String, Vec<String>)> {
    let mut context: Vec<(String, Vec<String>)> = pairs
        .iter()
        .map(|(k, v)| (format!("kms:EncryptionContext:{k}"), vec![(*v).to_owned()]))
        .collect();
    context.push((
        "kms:EncryptionContextKeys".to_owned(),
        pairs.iter().map(|(k, _)| (*k).to_owned()).collect(),
    ));
    context
}

const ENCRYPTION_CONTEXT_PREFIX: &str = "kms:encryptioncontext:";

/// Whether the documentation settles that `key` is absent from `request` (a key the
/// request does not carry and that is not settled absent is unknown: the verifier evaluates
/// it as absent and says so).
pub fn documented_absent(request: &Request, key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    let action = request.action.to_ascii_lowercase();
    let starts = |prefix: &str| key.starts_with(prefix);
    // KMS's key operations take no tags and name the key by ARN, not by alias.
    if starts("aws:requesttag/") || key == "aws:tagkeys" || key == "kms:requestalias" {
        return true;
    }
    // Grant keys exist on CreateGrant only.
    if starts("kms:grant") && action != "kms:creategrant" {
        return true;
    }
    // The encryption context is known exactly where the request carries one, and the
    // operations without an EncryptionContext parameter have none.
    if starts(ENCRYPTION_CONTEXT_PREFIX) || key == "kms:encryptioncontextkeys" {
        let carries_context = request.context.iter().any(|(k, _)| {
            k.to_ascii_lowercase()
                .starts_with(ENCRYPTION_CONTEXT_PREFIX)
        });
        let no_context_parameter = matches!(
            action.as_str(),
            "kms:describekey" | "kms:creategrant" | "kms:retiregrant"
        );
        return carries_context || no_context_parameter;
    }
    match request.caller {
        Caller::Aws { .. } => {
            matches!(
                key.as_str(),
                "aws:principalservicename"
                    | "aws:principalservicenameslist"
                    | "aws:sourcevpc"
                    | "aws:sourcevpce"
                    | "aws:vpcsourceip"
            ) || (key == "aws:username" && request.context_value("aws:username").is_none())
        }
        Caller::Service(_) => matches!(
            key.as_str(),
            "kms:viaservice"
                | "aws:calledvia"
                | "aws:calledviafirst"
                | "aws:calledvialast"
                | "aws:username"
        ),
    }
}

/// Whether the documentation says `request` carries `key` though its value cannot be known
/// in advance (the address the call came from, the time, the role's unique id).
pub fn present_with_unknown_value(request: &Request, key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    matches!(
        key.as_str(),
        "aws:currenttime" | "aws:epochtime" | "aws:useragent"
    ) || (matches!(request.caller, Caller::Aws { .. })
        && matches!(key.as_str(), "aws:sourceip" | "aws:userid"))
}

/// Whether a condition on `key` reads a value the verifier does not know for `request`.
pub fn unknown_key(request: &Request, key: &str) -> bool {
    request.context_value(key).is_none() && !documented_absent(request, key)
}

impl Profile {
    /// The requests the profile needs allowed for `p`, and the statements that allow them.
    pub fn requirements(self, p: &Params<'_>) -> Requirements {
        match self {
            Profile::CodeguruGrants => codeguru_grants(p),
            Profile::AmazonQLambda => amazon_q(p, &AmazonQScope::lambda(p)),
            Profile::AmazonQCodeRepository => amazon_q(p, &AmazonQScope::code_repository(p)),
        }
    }
}

/// The principal that calls Inspector, as the caller of a request.
fn principal_caller(p: &Params<'_>) -> Caller {
    Caller::Aws {
        arn: p.principal_arn.to_owned(),
        account: p.account_id.to_owned(),
    }
}

/// `caller`'s request for `action` on the key.
fn key_request(
    p: &Params<'_>,
    caller: &Caller,
    action: &str,
    context: Vec<(String, Vec<String>)>,
) -> Request {
    Request {
        caller: caller.clone(),
        action: action.to_owned(),
        resource: p.key_arn.to_owned(),
        context,
    }
}

fn inspector_service(p: &Params<'_>) -> String {
    format!("inspector2.{}.amazonaws.com", p.region)
}

/// The seed's system: the principal's credentials, via CodeGuru Security, create a grant
/// limited to [`GRANT_OPERATIONS`], and use the key via Inspector and CodeGuru Security.
fn codeguru_grants(p: &Params<'_>) -> Requirements {
    let role = principal_caller(p);
    let inspector = inspector_service(p);
    let codeguru = format!("codeguru-security.{}.amazonaws.com", p.region);
    let mut required = Vec::new();
    let mut grant = key_request(p, &role, "kms:CreateGrant", principal_context(p, &codeguru));
    grant.context.push((
        "kms:GrantOperations".into(),
        GRANT_OPERATIONS.map(str::to_owned).to_vec(),
    ));
    // CodeGuru Security, a service integrated with KMS, creates the grant.
    grant
        .context
        .extend(ctx(&[("kms:GrantIsForAWSResource", "true")]));
    required.push(Required {
        request: grant,
        statement: 0,
    });
    for via in [&inspector, &codeguru] {
        for action in [
            "kms:Encrypt",
            "kms:Decrypt",
            "kms:RetireGrant",
            "kms:DescribeKey",
            "kms:GenerateDataKeyWithoutPlaintext",
        ] {
            required.push(Required {
                request: key_request(p, &role, action, principal_context(p, via)),
                statement: 1,
            });
        }
    }
    let statements = vec![
        json!({
            "Sid": "AllowCodeGuruSecurityToRequestAGrantForTheKey",
            "Effect": "Allow",
            "Action": "kms:CreateGrant",
            "Resource": "*",
            "Condition": {
                "ForAllValues:StringEquals": {"kms:GrantOperations": GRANT_OPERATIONS},
                "StringEquals": {"kms:ViaService": [codeguru]}
            }
        }),
        json!({
            "Sid": "AllowInspectorAndCodeGuruSecurityToUseTheKey",
            "Effect": "Allow",
            "Action": ["kms:Encrypt", "kms:Decrypt", "kms:RetireGrant", "kms:DescribeKey", "kms:GenerateDataKeyWithoutPlaintext"],
            "Resource": "*",
            "Condition": {"StringEquals": {"kms:ViaService": [inspector, codeguru]}}
        }),
    ];
    Requirements {
        statements,
        required,
    }
}

/// What differs between the Amazon Q profiles: the encryption context's scope key, the
/// resources Amazon Q acts for, and the statements' Sids.
struct AmazonQScope {
    scope_key: &'static str,
    /// The resources the statements allow Amazon Q to act for.
    source_arn_pattern: String,
    /// The resource the checked requests are made for.
    source_arn: String,
    sids: [&'static str; 4],
}

impl AmazonQScope {
    fn lambda(p: &Params<'_>) -> AmazonQScope {
        AmazonQScope::new(
            p,
            "kms:EncryptionContext:aws:qdeveloper:lambda-codescan-scope",
            ("qdeveloper", "scans"),
            [
                "Allow Amazon Q to encrypt and decrypt Lambda code snippets",
                "Allow Amazon Q to describe the key for Lambda code scanning",
                "Allow Inspector to encrypt and decrypt Lambda code snippets using FAS",
                "Allow Inspector to describe the key for Lambda code scanning using FAS",
            ],
        )
    }

    fn code_repository(p: &Params<'_>) -> AmazonQScope {
        AmazonQScope::new(
            p,
            "kms:EncryptionContext:aws:qdeveloper:codesecurity-scope",
            ("inspector2", "codesecurity-integration"),
            [
                "Allow Q to use Encrypt Decrypt GenerateDataKey and GenerateDataKeyWithoutPlaintext",
                "Allow Q to use DescribeKey",
                "Allow Inspector to use Encrypt Decrypt GenerateDataKey and GenerateDataKeyWithoutPlaintext using FAS",
                "Allow Inspector to use DescribeKey using FAS",
            ],
        )
    }

    /// `(service, resource_type)`: Amazon Q acts for the resources
    /// `arn:<partition>:<service>:<region>:<account>:<resource_type>/*`.
    fn new(
        p: &Params<'_>,
        scope_key: &'static str,
        (service, resource_type): (&str, &str),
        sids: [&'static str; 4],
    ) -> AmazonQScope {
        let (partition, region, account) = (partition_of(p.region), p.region, p.account_id);
        AmazonQScope {
            scope_key,
            source_arn_pattern: format!(
                "arn:{partition}:{service}:{region}:{account}:{resource_type}/*"
            ),
            source_arn: format!(
                "arn:{partition}:{service}:{region}:{account}:{resource_type}/inspector-keyd-check"
            ),
            sids,
        }
    }
}

/// Amazon Q, and the principal's credentials via Inspector, use the key through the key
/// policy, with the encryption context of `scope`.
fn amazon_q(p: &Params<'_>, scope: &AmazonQScope) -> Requirements {
    let inspector = inspector_service(p);
    Requirements {
        statements: amazon_q_statements(p, scope, &inspector),
        required: amazon_q_required(p, scope, &inspector),
    }
}

fn amazon_q_required(p: &Params<'_>, scope: &AmazonQScope, inspector: &str) -> Vec<Required> {
    let role = principal_caller(p);
    let q = Caller::Service(Q_SERVICE.to_owned());
    let account = p.account_id;
    let context_key = scope.scope_key.trim_start_matches("kms:EncryptionContext:");
    let mut required = Vec::new();
    for action in Q_DATA_ACTIONS {
        let mut context = service_context(p, Q_SERVICE, account, &scope.source_arn);
        context.extend(encryption_context(&[(context_key, account)]));
        required.push(Required {
            request: key_request(p, &q, action, context),
            statement: 0,
        });
    }
    let describe_context = service_context(p, Q_SERVICE, account, &scope.source_arn);
    required.push(Required {
        request: key_request(p, &q, "kms:DescribeKey", describe_context),
        statement: 1,
    });
    for action in Q_DATA_ACTIONS {
        let mut context = principal_context(p, inspector);
        context.extend(encryption_context(&[(context_key, account)]));
        required.push(Required {
            request: key_request(p, &role, action, context),
            statement: 2,
        });
    }
    let describe_context = principal_context(p, inspector);
    required.push(Required {
        request: key_request(p, &role, "kms:DescribeKey", describe_context),
        statement: 3,
    });
    required
}

fn amazon_q_statements(p: &Params<'_>, scope: &AmazonQScope, inspector: &str) -> Vec<Value> {
    let account = p.account_id;
    let (scope_key, source_arn_pattern, sids) =
        (scope.scope_key, &scope.source_arn_pattern, scope.sids);
    vec![
        json!({
            "Sid": sids[0],
            "Effect": "Allow",
            "Principal": {"Service": Q_SERVICE},
            "Action": Q_DATA_ACTIONS,
            "Resource": "*",
            "Condition": {
                "StringEquals": {"aws:SourceAccount": account},
                "StringLike": {scope_key: account},
                "ArnLike": {"aws:SourceArn": source_arn_pattern}
            }
        }),
        json!({
            "Sid": sids[1],
            "Effect": "Allow",
            "Principal": {"Service": Q_SERVICE},
            "Action": "kms:DescribeKey",
            "Resource": "*",
            "Condition": {
                "StringEquals": {"aws:SourceAccount": account},
                "ArnLike": {"aws:SourceArn": source_arn_pattern}
            }
        }),
        json!({
            "Sid": sids[2],
            "Effect": "Allow",
            "Principal": {"AWS": p.principal_arn},
            "Action": Q_DATA_ACTIONS,
            "Resource": "*",
            "Condition": {
                "StringEquals": {"kms:ViaService": inspector},
                "StringLike": {scope_key: account}
            }
        }),
        json!({
            "Sid": sids[3],
            "Effect": "Allow",
            "Principal": {"AWS": p.principal_arn},
            "Action": "kms:DescribeKey",
            "Resource": "*",
            "Condition": {"StringEquals": {"kms:ViaService": inspector}}
        }),
    ]
}

/// The statement by which a key policy lets the account delegate through IAM policies
/// (the statement KMS puts in every default key policy).
pub fn account_delegation_statement(region: &str, account_id: &str) -> Value {
    json!({
        "Sid": "Enable IAM User Permissions",
        "Effect": "Allow",
        "Principal": {"AWS": format!("arn:{}:iam::{account_id}:root", partition_of(region))},
        "Action": "kms:*",
        "Resource": "*"
    })
}
