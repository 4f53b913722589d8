//! Every code a finding can have, declared once with its stable wire name, its severity and
//! the example docs/verification.md's table gives (the variant's doc comment): a test holds
//! that table to this list, so a new code cannot go undocumented or be spelled twice.

use std::fmt;

use super::Severity;

macro_rules! finding_codes {
    ($(
        $(#[doc = $example:literal])+
        $variant:ident = $wire:literal, $severity:ident $(, $note:literal)?;
    )+) => {
        /// A finding's code; its wire name is a stable UPPER_SNAKE string.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum FindingCode {
            $($(#[doc = $example])+ $variant,)+
        }

        impl FindingCode {
            /// Every code, in the order of the documentation's table.
            pub const ALL: &[FindingCode] = &[$(FindingCode::$variant,)+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(FindingCode::$variant => $wire,)+
                }
            }

            /// The severity of a finding with this code, except where [`severity_note`]
            /// says otherwise.
            ///
            /// [`severity_note`]: FindingCode::severity_note
            pub fn severity(self) -> Severity {
                match self {
                    $(FindingCode::$variant => Severity::$severity,)+
                }
            }

            /// When a finding of this code has another severity than [`FindingCode::severity`].
            pub fn severity_note(self) -> Option<&'static str> {
                match self {
                    $(FindingCode::$variant => None $(.or(Some($note)))?,)+
                }
            }

            /// What raises it, as the documentation's table says.
            pub fn example(self) -> &'static str {
                match self {
                    $(FindingCode::$variant => concat!($($example),+),)+
                }
            }
        }
    };
}

finding_codes! {
    /// a trailing comma, or the page's line breaks pasted inside a string; with line and column
    PolicyInvalidJson = "POLICY_INVALID_JSON", Error;
    /// a key policy over 32,768 bytes
    PolicyTooLarge = "POLICY_TOO_LARGE", Error;
    /// `"Version": "2012-10-18"`
    PolicyInvalidVersion = "POLICY_INVALID_VERSION", Error;
    /// `"Version": "2008-10-17"` (policy variables not recognized)
    PolicyOldVersion = "POLICY_OLD_VERSION", Warning;
    /// no `Version`
    PolicyMissingVersion = "POLICY_MISSING_VERSION", Warning;
    /// `"Statement": []`
    PolicyNoStatements = "POLICY_NO_STATEMENTS", Error;
    /// a statement without `Effect`, `Action`, `Resource`, or (key policy) `Principal`
    StatementMissingElement = "STATEMENT_MISSING_ELEMENT", Error;
    /// both `Action` and `NotAction`
    StatementConflictingElements = "STATEMENT_CONFLICTING_ELEMENTS", Error;
    /// `"action"` (element names are case-sensitive)
    UnknownElement = "UNKNOWN_ELEMENT", Error;
    /// `"Effect"` twice in one statement
    DuplicateElement = "DUPLICATE_ELEMENT", Error;
    /// `"Effect": "Permit"`, `"Action": 42`
    InvalidElementValue = "INVALID_ELEMENT_VALUE", Error;
    /// two statements with Sid `AllowQ`
    DuplicateSid = "DUPLICATE_SID", Error;
    /// an identity-policy Sid with spaces, as the seed's statements have
    InvalidSid = "INVALID_SID", Error;
    /// a `Principal` in an identity policy
    PrincipalNotAllowed = "PRINCIPAL_NOT_ALLOWED", Error;
    /// `StringEqual`, `NullIfExists`
    InvalidConditionOperator = "INVALID_CONDITION_OPERATOR", Error;
    /// `StringEquals` on `kms:GrantOperations` instead of `ForAllValues:StringEquals`
    MissingSetQualifier = "MISSING_SET_QUALIFIER", Error;
    /// `ForAllValues:StringEquals` on `kms:ViaService`
    SetQualifierOnSingleValuedKey = "SET_QUALIFIER_ON_SINGLE_VALUED_KEY", SecurityWarning, r#"(ERROR for `ForAllValues:` on `kms:EncryptionContext:*` in a key policy, which KMS refuses; WARNING for `ForAnyValue:`)"#;
    /// `StringEquals` with `"codeguru-security.*"`
    WildcardWithoutLike = "WILDCARD_WITHOUT_LIKE", Warning;
    /// `codeguru-security.Region.amazonaws.com`, `<Region>`, `account-id`, `role-ARN` left from the
    /// documentation
    PlaceholderNotReplaced = "PLACEHOLDER_NOT_REPLACED", Error;
    /// `Allow` with `NotPrincipal`
    AllowWithNotPrincipal = "ALLOW_WITH_NOT_PRINCIPAL", SecurityWarning;
    /// `Allow` to `"Principal": "*"` with no condition
    PublicPrincipal = "PUBLIC_PRINCIPAL", SecurityWarning;
    /// `Allow` to `q.amazonaws.com` without `aws:SourceAccount`/`aws:SourceArn`
    ServicePrincipalWithoutSource = "SERVICE_PRINCIPAL_WITHOUT_SOURCE", SecurityWarning;
    /// `kms:Decrypt` allowed to `"*"` whatever the caller's account (a condition on `aws:SourceIp`
    /// alone does not pin it), naming the statement and a witness request; also for the actions
    /// that break scanning
    PublicAccess = "PUBLIC_ACCESS", Error;
    /// `kms:Decrypt` or `kms:ScheduleKeyDeletion` allowed to `arn:aws:iam::444455556666:root`, a
    /// principal outside the account, its trusted accounts and its organization, with a witness
    ExternalAccess = "EXTERNAL_ACCESS", SecurityWarning, "(ERROR with `verification.deny_external_access = true`)";
    /// a statement the access summary could not analyse exactly (a policy variable, or more
    /// combinations of values than the bound), naming it
    AnalysisIncomplete = "ANALYSIS_INCOMPLETE", Warning;
    /// the ARN names no key in the backend
    KeyNotFound = "KEY_NOT_FOUND", Error;
    /// `…:key/mrk-1234abcd-…` (multi-Region ids with dashes, as moto makes)
    KeyArnInvalid = "KEY_ARN_INVALID", Error;
    /// a `Disabled` or `PendingDeletion` key
    KeyNotEnabled = "KEY_NOT_ENABLED", Error;
    /// `RSA_2048`
    KeyNotSymmetric = "KEY_NOT_SYMMETRIC", Error;
    /// `SIGN_VERIFY`
    KeyUsageNotEncryptDecrypt = "KEY_USAGE_NOT_ENCRYPT_DECRYPT", Error;
    /// an AWS managed key
    KeyNotCustomerManaged = "KEY_NOT_CUSTOMER_MANAGED", Error;
    /// a single-Region key in `eu-west-1` for a sidecar in `us-east-1`
    KeyRegionMismatch = "KEY_REGION_MISMATCH", Error;
    /// no DescribeKey output was given
    KeyMetadataNotChecked = "KEY_METADATA_NOT_CHECKED", Warning;
    /// one per missing statement (or per missing delegation to the account), listing the requests
    /// it would allow, with the statement that fixes it as `fix`; or one for the requests the
    /// principal's permissions boundary does not allow
    RequiredAccessMissing = "REQUIRED_ACCESS_MISSING", Error;
    /// a `Deny` covers `kms:Decrypt` via codeguru-security; one per denying statement and caller,
    /// naming its Sid
    RequiredAccessExplicitlyDenied = "REQUIRED_ACCESS_EXPLICITLY_DENIED", Error;
    /// a `Deny` with `NotPrincipal` listing the role (and its account), which does not exempt the
    /// role's session; the fix says to use `"Principal": "*"` with `ArnNotEquals` on
    /// `aws:PrincipalArn`
    NotPrincipalDoesNotExempt = "NOT_PRINCIPAL_DOES_NOT_EXEMPT", Error;
    /// a condition on `aws:SourceIp` or `aws:CalledVia`, whose value on the profile's requests is
    /// not known; evaluated as absent
    ConditionKeyNotInRequest = "CONDITION_KEY_NOT_IN_REQUEST", Warning;
    /// the key policy delegates to the account and no identity policy was given; inline documents
    /// verified without identity policies; or IAM could not be read, saying why
    IdentityPolicyNotChecked = "IDENTITY_POLICY_NOT_CHECKED", Warning;
    /// `kms:CreateGrant` allowed for any grant operation
    GrantOperationsUnrestricted = "GRANT_OPERATIONS_UNRESTRICTED", SecurityWarning;
    /// the principal may call `kms:Decrypt` directly, not only via Inspector or CodeGuru
    ViaServiceUnrestricted = "VIA_SERVICE_UNRESTRICTED", SecurityWarning;
}

impl FindingCode {
    /// The code's row in docs/verification.md's table of findings.
    pub fn doc_row(self) -> String {
        let severity = self.severity().as_str();
        let note = self
            .severity_note()
            .map(|n| format!(" {n}"))
            .unwrap_or_default();
        format!(
            "| `{}` | {severity}{note} | {} |",
            self.as_str(),
            self.example().trim()
        )
    }
}

impl fmt::Display for FindingCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for FindingCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl PartialEq<&str> for FindingCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_are_distinct_upper_snake_case() {
        let mut names: Vec<&str> = FindingCode::ALL.iter().map(|c| c.as_str()).collect();
        assert!(
            names
                .iter()
                .all(|n| n.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        );
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FindingCode::ALL.len());
    }
}
