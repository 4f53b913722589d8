//! The vocabulary shared by every layer: scan and resource types, the (scan type,
//! resource type) targets a key can be set for, and validated KMS key ARNs.

use std::{fmt, sync::LazyLock};

use regex::Regex;

use crate::proto;

/// An Inspector enumeration, declared once: each value with its AWS spelling; the proto
/// enumeration of the same name has the same values (and an `Unspecified`).
macro_rules! inspector_enum {
    ($(#[$meta:meta])* $name:ident [$count:literal] { $($variant:ident = $aws:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($variant,)+
        }

        impl $name {
            /// Every value.
            pub const ALL: [$name; $count] = [$($name::$variant,)+];

            /// The value of an AWS spelling.
            pub fn from_aws_str(text: &str) -> Option<$name> {
                $name::ALL.into_iter().find(|t| t.as_aws_str() == text)
            }

            /// The AWS spelling.
            pub fn as_aws_str(self) -> &'static str {
                match self {
                    $($name::$variant => $aws,)+
                }
            }

            /// The value of the API's enumeration; `None` for `Unspecified`.
            pub fn from_proto(value: proto::$name) -> Option<$name> {
                match value {
                    $(proto::$name::$variant => Some($name::$variant),)+
                    proto::$name::Unspecified => None,
                }
            }

            /// The API's enumeration value.
            pub fn to_proto(self) -> proto::$name {
                match self {
                    $($name::$variant => proto::$name::$variant,)+
                }
            }
        }
    };
}

inspector_enum! {
    /// Amazon Inspector's ScanType.
    ScanType [3] {
        Network = "NETWORK",
        Package = "PACKAGE",
        Code = "CODE",
    }
}

inspector_enum! {
    /// Amazon Inspector's ResourceType.
    ResourceType [9] {
        AwsEc2Instance = "AWS_EC2_INSTANCE",
        AwsEcrContainerImage = "AWS_ECR_CONTAINER_IMAGE",
        AwsEcrRepository = "AWS_ECR_REPOSITORY",
        AwsLambdaFunction = "AWS_LAMBDA_FUNCTION",
        CodeRepository = "CODE_REPOSITORY",
        MachineImage = "MACHINE_IMAGE",
        MicrosoftComputeVirtualMachines = "Microsoft.Compute/virtualMachines",
        MicrosoftContainerRegistryContainerImage = "Microsoft.ContainerRegistry/registry/containerImage",
        MicrosoftWebSites = "Microsoft.Web/sites",
    }
}

/// A (scan type, resource type) pair for which Inspector documents customer managed keys.
/// Only [`Target::new`] makes one, so holding a `Target` means the pair is supported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    scan_type: ScanType,
    resource_type: ResourceType,
}

/// The pairs the Inspector user guide documents for customer managed keys.
pub const SUPPORTED_TARGETS: &[(ScanType, ResourceType)] = &[
    (ScanType::Code, ResourceType::AwsLambdaFunction),
    (ScanType::Code, ResourceType::CodeRepository),
];

impl Target {
    /// The pair, or `None` when customer managed keys are not documented for it.
    pub fn new(scan_type: ScanType, resource_type: ResourceType) -> Option<Target> {
        SUPPORTED_TARGETS
            .contains(&(scan_type, resource_type))
            .then_some(Target {
                scan_type,
                resource_type,
            })
    }

    pub fn scan_type(self) -> ScanType {
        self.scan_type
    }

    /// Its position in [`SUPPORTED_TARGETS`].
    pub fn index(self) -> usize {
        SUPPORTED_TARGETS
            .iter()
            .position(|&pair| pair == (self.scan_type, self.resource_type))
            .unwrap_or(0)
    }

    pub fn resource_type(self) -> ResourceType {
        self.resource_type
    }

    /// Every supported target.
    pub fn all() -> impl Iterator<Item = Target> {
        SUPPORTED_TARGETS
            .iter()
            .map(|&(scan_type, resource_type)| Target {
                scan_type,
                resource_type,
            })
    }

    /// `CODE + AWS_LAMBDA_FUNCTION, CODE + CODE_REPOSITORY`, for error messages.
    pub fn supported_list() -> String {
        Target::all()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} + {}",
            self.scan_type.as_aws_str(),
            self.resource_type.as_aws_str()
        )
    }
}

/// An account and Region: Inspector's encryption key is set per account, per Region, so
/// everything the sidecar manages is in one. Made only from the configuration (never from a
/// request, which looks its scope up among the managed ones), each distinct pair once for
/// the life of the process: it is `Copy`, and compares and hashes by address, so the hot
/// read carries it without a count or a copy.
#[derive(Clone, Copy)]
pub struct Scope(&'static ScopeName);

#[derive(Debug)]
struct ScopeName {
    account_id: String,
    region: String,
}

/// Every scope made so far, by account and Region: bounded by the configuration's accounts
/// and Regions.
type Made = std::collections::HashMap<(String, String), &'static ScopeName>;
static SCOPES: LazyLock<std::sync::Mutex<Made>> = LazyLock::new(Default::default);

impl Scope {
    /// The scope of `account_id` in `region`, which the caller has validated (12 digits, a
    /// Region name). For the configuration and tests: requests look theirs up.
    pub fn of(account_id: &str, region: &str) -> Scope {
        let mut scopes = SCOPES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let name = scopes
            .entry((account_id.to_owned(), region.to_owned()))
            .or_insert_with(|| {
                Box::leak(Box::new(ScopeName {
                    account_id: account_id.to_owned(),
                    region: region.to_owned(),
                }))
            });
        Scope(name)
    }

    pub fn account_id(self) -> &'static str {
        &self.0.account_id
    }

    pub fn region(self) -> &'static str {
        &self.0.region
    }

    pub fn partition(self) -> &'static str {
        partition_of(self.region())
    }
}

impl PartialEq for Scope {
    fn eq(&self, other: &Scope) -> bool {
        std::ptr::eq(self.0, other.0)
    }
}

impl Eq for Scope {}

impl std::hash::Hash for Scope {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::ptr::hash(self.0, state);
    }
}

impl PartialOrd for Scope {
    fn partial_cmp(&self, other: &Scope) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scope {
    fn cmp(&self, other: &Scope) -> std::cmp::Ordering {
        (self.account_id(), self.region()).cmp(&(other.account_id(), other.region()))
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scope({self})")
    }
}

/// `111122223333/us-east-1`.
impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.account_id(), self.region())
    }
}

/// A target in a scope: what one key setting of Inspector is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScopedTarget {
    pub scope: Scope,
    pub target: Target,
}

impl ScopedTarget {
    pub fn new(scope: Scope, target: Target) -> ScopedTarget {
        ScopedTarget { scope, target }
    }
}

/// `CODE + AWS_LAMBDA_FUNCTION in 111122223333/us-east-1`.
impl fmt::Display for ScopedTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} in {}", self.target, self.scope)
    }
}

/// Inspector's `KmsKeyArn` pattern, anchored: the sidecar treats it as a full match.
static KMS_KEY_ARN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^arn:aws(-(us-gov|cn))?:kms:([a-z0-9][-.a-z0-9]{0,62})?:[0-9]{12}:key/(([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})|(mrk-[0-9a-zA-Z]{32}))$",
    )
    .unwrap_or_else(|e| unreachable!("constant pattern compiles: {e}"))
});

/// A KMS key ARN that matches Inspector's `KmsKeyArn` pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyArn(String);

/// Why a string is not a key ARN Inspector accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyArnError {
    #[error("is required")]
    Empty,
    #[error(
        "`{0}` is an alias; only key ARNs are accepted (arn:aws:kms:<region>:<account-id>:key/<key-id>)"
    )]
    Alias(String),
    #[error(
        "`{0}` is a bare key id; only key ARNs are accepted (arn:aws:kms:<region>:<account-id>:key/<key-id>)"
    )]
    BareKeyId(String),
    #[error(
        "`{0}` is not a KMS key ARN; only key ARNs are accepted (arn:aws:kms:<region>:<account-id>:key/<key-id>, key id a UUID or mrk- and 32 letters or digits)"
    )]
    Malformed(String),
}

/// Inspector's `FindingArn` pattern, anchored.
static FINDING_ARN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^arn:(aws[a-zA-Z-]*)?:inspector2:[a-z]{2}(-gov)?-[a-z]+-\d{1}:\d{12}:finding/[a-f0-9]{32}$",
    )
    .unwrap_or_else(|e| unreachable!("constant pattern compiles: {e}"))
});

/// The ARN of an Inspector finding (`FindingArn`: at most 100 characters, the pattern).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FindingArn(String);

impl FindingArn {
    pub fn parse(input: &str) -> Result<FindingArn, String> {
        if input.len() <= 100 && FINDING_ARN.is_match(input) {
            return Ok(FindingArn(input.to_owned()));
        }
        let shown: String = input
            .chars()
            .take(120)
            .filter(|c| !c.is_control())
            .collect();
        Err(format!(
            "`{shown}` is not an Inspector finding ARN (arn:aws:inspector2:<region>:<account-id>:finding/<32 lowercase hex digits>, at most 100 characters)"
        ))
    }

    /// A new finding ARN in `region` and `account_id`.
    pub fn generate(region: &str, account_id: &str) -> FindingArn {
        FindingArn(format!(
            "arn:{}:inspector2:{region}:{account_id}:finding/{}",
            partition_of(region),
            uuid::Uuid::new_v4().simple()
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The Region of the finding (its ARN's fourth field).
    pub fn region(&self) -> &str {
        self.0.split(':').nth(3).unwrap_or_default()
    }

    /// The account of the finding (its ARN's fifth field).
    pub fn account_id(&self) -> &str {
        self.0.split(':').nth(4).unwrap_or_default()
    }
}

impl fmt::Display for FindingArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A finding's code snippet and suggested fixes (Inspector's `CodeSnippetResult`). Its
/// `Debug` leaves the code out: snippets are customer code and never reach a log.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CodeSnippet {
    pub finding_arn: String,
    pub start_line: i32,
    pub end_line: i32,
    pub lines: Vec<CodeLine>,
    pub suggested_fixes: Vec<SuggestedFix>,
}

impl fmt::Debug for CodeSnippet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CodeSnippet")
            .field("finding_arn", &self.finding_arn)
            .field("lines", &self.lines.len())
            .field("suggested_fixes", &self.suggested_fixes.len())
            .finish_non_exhaustive()
    }
}

/// One line of a snippet.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CodeLine {
    pub content: String,
    pub line_number: i32,
}

/// A suggested fix.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SuggestedFix {
    pub description: String,
    pub code: String,
}

/// Why a finding's snippet is not returned (Inspector's `CodeSnippetErrorCode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnippetErrorCode {
    InternalError,
    AccessDenied,
    CodeSnippetNotFound,
    InvalidInput,
}

impl SnippetErrorCode {
    /// From Inspector's spelling; an unknown code is an internal error.
    pub fn from_aws_str(code: &str) -> SnippetErrorCode {
        match code {
            "ACCESS_DENIED" => SnippetErrorCode::AccessDenied,
            "CODE_SNIPPET_NOT_FOUND" => SnippetErrorCode::CodeSnippetNotFound,
            "INVALID_INPUT" => SnippetErrorCode::InvalidInput,
            _ => SnippetErrorCode::InternalError,
        }
    }

    /// What the sidecar tells a caller about it.
    pub fn describe(self) -> &'static str {
        match self {
            SnippetErrorCode::InternalError => {
                "the snippet could not be read; see the sidecar's log"
            }
            SnippetErrorCode::AccessDenied => {
                "the key that protects the snippet cannot be used: it is disabled, pending deletion, or its policy denies the scanning service"
            }
            SnippetErrorCode::CodeSnippetNotFound => "no code snippet is stored for the finding",
            SnippetErrorCode::InvalidInput => "the finding ARN is not valid here",
        }
    }
}

/// A finding whose snippet is not returned; `message` is the sidecar's own text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnippetError {
    pub finding_arn: String,
    pub code: SnippetErrorCode,
    pub message: String,
}

/// What BatchGetCodeSnippet answers: results and per-finding errors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CodeSnippets {
    pub results: Vec<CodeSnippet>,
    pub errors: Vec<SnippetError>,
}

/// The key id part of a key ARN: a UUID, or `mrk-` + 32 alphanumerics.
static BARE_KEY_ID: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|mrk-[0-9a-zA-Z]{32})$")
        .unwrap_or_else(|e| unreachable!("constant pattern compiles: {e}"))
});

impl KeyArn {
    pub fn parse(input: &str) -> Result<KeyArn, KeyArnError> {
        if input.is_empty() {
            return Err(KeyArnError::Empty);
        }
        if KMS_KEY_ARN.is_match(input) {
            return Ok(KeyArn(input.to_owned()));
        }
        // Values are echoed in messages; keep them short and printable.
        let shown: String = input
            .chars()
            .take(160)
            .filter(|c| !c.is_control())
            .collect();
        if input.starts_with("alias/") || (input.starts_with("arn:") && input.contains(":alias/")) {
            Err(KeyArnError::Alias(shown))
        } else if BARE_KEY_ID.is_match(input) {
            Err(KeyArnError::BareKeyId(shown))
        } else {
            Err(KeyArnError::Malformed(shown))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn part(&self, index: usize) -> &str {
        self.0.split(':').nth(index).unwrap_or_default()
    }

    /// `aws`, `aws-us-gov` or `aws-cn`.
    pub fn partition(&self) -> &str {
        self.part(1)
    }

    /// The Region; may be empty, as the pattern allows.
    pub fn region(&self) -> &str {
        self.part(3)
    }

    pub fn account_id(&self) -> &str {
        self.part(4)
    }

    /// The key id after `key/`.
    pub fn key_id(&self) -> &str {
        self.part(5).trim_start_matches("key/")
    }

    /// Multi-Region key ids start with `mrk-`.
    pub fn is_multi_region(&self) -> bool {
        self.key_id().starts_with("mrk-")
    }
}

impl fmt::Display for KeyArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

static REGION: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$")
        .unwrap_or_else(|e| unreachable!("constant pattern compiles: {e}"))
});

/// Whether `region` has the shape of an AWS Region name (`us-east-1`).
pub fn is_region_name(region: &str) -> bool {
    REGION.is_match(region)
}

/// The AWS partitions whose ARNs the sidecar accepts.
pub const PARTITIONS: &[&str] = &["aws", "aws-cn", "aws-us-gov"];

pub fn is_partition(partition: &str) -> bool {
    PARTITIONS.contains(&partition)
}

/// Whether `id` looks like an access key id: 16 to 128 ASCII letters and digits (AWS's own
/// are 20 upper-case letters and digits).
pub fn is_access_key_id(id: &str) -> bool {
    (16..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Whether `account` is an AWS account id: exactly 12 ASCII digits.
pub fn is_account_id(account: &str) -> bool {
    account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit())
}

/// An AWS Organizations id: `o-` and 10 to 32 lowercase letters or digits.
pub fn is_organization_id(id: &str) -> bool {
    id.strip_prefix("o-").is_some_and(|rest| {
        (10..=32).contains(&rest.len())
            && rest
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    })
}

/// The partition a Region belongs to.
pub fn partition_of(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else {
        "aws"
    }
}

/// A SPIFFE trust domain name: lowercase letters, digits, `.`, `-` and `_` (SPIFFE ID spec
/// §2.1).
pub fn is_trust_domain(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// The trust domain of a SPIFFE ID (`spiffe://<trust domain>/<path>`).
pub fn trust_domain_of(id: &str) -> Option<&str> {
    let rest = id.strip_prefix("spiffe://")?;
    Some(rest.split('/').next().unwrap_or(rest))
}

/// An IAM role or user, by the name IAM's calls take (without its path). Sessions, groups
/// and account roots are not principals of this kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IamPrincipal<'a> {
    Role(&'a str),
    User(&'a str),
}

impl<'a> IamPrincipal<'a> {
    /// `arn:aws:iam::111122223333:role/path/name` is the role `name` (IAM's calls take the
    /// name without the path).
    pub fn parse(arn: &'a str) -> Option<IamPrincipal<'a>> {
        let parts: Vec<&str> = arn.splitn(6, ':').collect();
        let ["arn", _, "iam", "", _, resource] = parts.as_slice() else {
            return None;
        };
        let name = |rest: &'a str| rest.rsplit('/').next().filter(|n| !n.is_empty());
        if let Some(rest) = resource.strip_prefix("role/") {
            name(rest).map(IamPrincipal::Role)
        } else if let Some(rest) = resource.strip_prefix("user/") {
            name(rest).map(IamPrincipal::User)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scope_is_made_once_per_account_and_region() {
        let scope = Scope::of("222233334444", "eu-west-1");
        assert_eq!(scope, Scope::of("222233334444", "eu-west-1"));
        assert_ne!(scope, Scope::of("222233334444", "us-east-1"));
        assert_ne!(scope, Scope::of("333344445555", "eu-west-1"));
        assert_eq!(scope.to_string(), "222233334444/eu-west-1");
        assert_eq!(
            Scope::of("222233334444", "cn-north-1").partition(),
            "aws-cn"
        );
    }

    #[test]
    fn principals_are_named_without_their_path() {
        assert_eq!(
            IamPrincipal::parse("arn:aws:iam::111122223333:role/inspector-keyd"),
            Some(IamPrincipal::Role("inspector-keyd"))
        );
        assert_eq!(
            IamPrincipal::parse("arn:aws:iam::111122223333:role/team/a/keyd"),
            Some(IamPrincipal::Role("keyd"))
        );
        assert_eq!(
            IamPrincipal::parse("arn:aws-cn:iam::111122223333:user/ops/alice"),
            Some(IamPrincipal::User("alice"))
        );
        for other in [
            "arn:aws:iam::111122223333:root",
            "arn:aws:iam::111122223333:role/",
            "arn:aws:sts::111122223333:assumed-role/keyd/session",
            "arn:aws:iam::111122223333:group/ops",
            "role/keyd",
        ] {
            assert_eq!(IamPrincipal::parse(other), None, "{other}");
        }
    }

    #[test]
    fn accepts_key_arns_in_every_partition() {
        for arn in [
            "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "arn:aws-us-gov:kms:us-gov-west-1:111122223333:key/1234ABCD-12ab-34cd-56ef-1234567890ab",
            "arn:aws-cn:kms:cn-north-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab",
        ] {
            let parsed = KeyArn::parse(arn);
            assert!(parsed.is_ok(), "{arn}: {parsed:?}");
        }
        let arn = KeyArn::parse(
            "arn:aws:kms:eu-west-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab",
        )
        .unwrap();
        assert_eq!(arn.region(), "eu-west-1");
        assert_eq!(arn.account_id(), "111122223333");
        assert_eq!(arn.key_id(), "mrk-1234abcd12ab34cd56ef1234567890ab");
        assert!(arn.is_multi_region());
    }

    #[test]
    fn refuses_aliases_bare_ids_and_near_misses() {
        let cases = [
            ("alias/inspector", "alias"),
            (
                "arn:aws:kms:us-east-1:111122223333:alias/inspector",
                "alias",
            ),
            ("1234abcd-12ab-34cd-56ef-1234567890ab", "bare key id"),
            ("mrk-1234abcd12ab34cd56ef1234567890ab", "bare key id"),
            // moto's multi-Region ids carry dashes
            (
                "arn:aws:kms:us-east-1:111122223333:key/mrk-1234abcd-12ab-34cd-56ef-1234567890ab",
                "not a KMS key ARN",
            ),
            (
                "arn:aws:kms:us-east-1:11112222333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
                "not a KMS key ARN",
            ),
            (
                "arn:aws-iso:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
                "not a KMS key ARN",
            ),
            (
                "xarn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
                "not a KMS key ARN",
            ),
            (
                "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890abX",
                "not a KMS key ARN",
            ),
        ];
        for (input, expected) in cases {
            let err = KeyArn::parse(input).unwrap_err().to_string();
            assert!(err.contains(expected), "{input}: {err}");
            assert!(err.contains("only key ARNs are accepted"), "{input}: {err}");
        }
        assert_eq!(KeyArn::parse(""), Err(KeyArnError::Empty));
    }

    #[test]
    fn only_documented_pairs_are_targets() {
        assert!(Target::new(ScanType::Code, ResourceType::AwsLambdaFunction).is_some());
        assert!(Target::new(ScanType::Code, ResourceType::CodeRepository).is_some());
        assert!(Target::new(ScanType::Package, ResourceType::AwsLambdaFunction).is_none());
        assert!(Target::new(ScanType::Code, ResourceType::AwsEc2Instance).is_none());
        assert_eq!(
            Target::supported_list(),
            "CODE + AWS_LAMBDA_FUNCTION, CODE + CODE_REPOSITORY"
        );
    }
}
