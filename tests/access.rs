//! The access summary (`verify::access`) on hand-made key policies whose answers are known:
//! who the summary says may read the code or break scanning, whether that access is
//! external or public, and the access a policy change adds. Every entry's witness is
//! decided again by the evaluator (`eval::decide_bounded`) on the same policies, and must
//! carry the flag its entry claims (an external entry's witness comes from outside the
//! key's account, its trusted accounts and its organization; a public entry's from an
//! account no policy names). tests/differential.rs checks the same summary against an
//! independent IAM simulator on random policies.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::Ipv4Addr;

use inspector_keyd::verify::{
    FindingCode, Profile, Severity,
    access::{
        self, AccessEntry, AccessSummary, BREAKS_SCANNING, Grantee, READS_CODE, Subject, Trust,
        Witness,
    },
    eval::{Caller, Decision, Request, decide_bounded},
    policy::{self, Document, DocumentKind, Policy},
    render,
    wildcard::arn_like,
};
use serde_json::{Value, json};

const REGION: &str = "us-east-1";
const ACCOUNT: &str = "111122223333";
const OTHER: &str = "444455556666";
const ROLE: &str = "arn:aws:iam::111122223333:role/inspector-keyd";
const KEY_ARN: &str = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
const ORG: &str = "o-a1b2c3d4e5";
const Q: &str = "q.amazonaws.com";
const INSPECTOR_VIA: &str = "inspector2.us-east-1.amazonaws.com";

fn parse(document: &Value) -> Policy {
    let text = serde_json::to_string_pretty(document).unwrap();
    let (parsed, findings) = policy::analyze(Document {
        kind: DocumentKind::KeyPolicy,
        name: "key_policy",
        text: &text,
    });
    parsed.unwrap_or_else(|| panic!("the key policy does not parse: {findings:?}\n{text}"))
}

/// A 2012-10-17 key policy of these statements.
fn key_policy(statements: Value) -> Policy {
    parse(&json!({"Version": "2012-10-17", "Statement": statements}))
}

/// The account's own delegation to its IAM policies (every key policy AWS writes has it).
fn own_root() -> Value {
    json!({"Sid": "Enable IAM User Permissions", "Effect": "Allow",
           "Principal": {"AWS": format!("arn:aws:iam::{ACCOUNT}:root")},
           "Action": "kms:*", "Resource": "*"})
}

/// The key of `ACCOUNT`, the inspector-keyd role whose identity policies are not known.
fn subject(trust: Trust<'_>) -> Subject<'_> {
    Subject {
        account_id: ACCOUNT,
        key_arn: KEY_ARN,
        principal_arn: Some(ROLE),
        identity_policies: None,
        boundary: None,
        trust,
    }
}

fn untrusted() -> Trust<'static> {
    Trust::default()
}

/// Whether the evaluator allows `request` on the subject's policies: the configured
/// principal's identity policies and boundary where the caller is that principal; anyone
/// else's identity policies are not known, so a key policy that leaves the request to them
/// (`IdentityPolicyNotChecked`) allows it as far as the key policy can tell.
fn allowed(key_policy: &Policy, subject: &Subject<'_>, request: &Request) -> bool {
    let configured = matches!(&request.caller,
        Caller::Aws { arn, .. } if Some(arn.as_str()) == subject.principal_arn);
    let (identity, boundary) = if configured {
        (subject.identity_policies, subject.boundary)
    } else {
        (None, None)
    };
    match decide_bounded(key_policy, identity, boundary, request) {
        Decision::Allow => true,
        Decision::IdentityPolicyNotChecked => identity.is_none(),
        Decision::ExplicitDeny { .. } | Decision::ImplicitDeny => false,
    }
}

/// The account a witness comes from: the caller's, or the one a service acts for (its
/// `aws:SourceAccount`, else the account of its `aws:SourceArn`).
fn witness_account(witness: &Witness) -> Option<String> {
    let request = &witness.request;
    match &request.caller {
        Caller::Aws { account, .. } => Some(account.clone()),
        Caller::Service(_) => match request.context_value("aws:SourceAccount") {
            Some([one]) => Some(one.clone()),
            _ => request
                .context_value("aws:SourceArn")
                .and_then(|v| v.first())
                .and_then(|arn| arn.split(':').nth(4))
                .filter(|a| a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit()))
                .map(str::to_owned),
        },
    }
}

/// Whether the witness comes from inside: the key's account, a trusted account, or a
/// principal of the trusted organization.
fn inside(witness: &Witness, subject: &Subject<'_>) -> bool {
    let account = witness_account(witness);
    let trusted_account = account.as_deref().is_some_and(|a| {
        a == subject.account_id || subject.trust.trusted_accounts.iter().any(|t| t == a)
    });
    let trusted_org = subject.trust.organization_id.is_some_and(|org| {
        matches!(&witness.request.caller, Caller::Aws { .. })
            && witness
                .request
                .context_value("aws:PrincipalOrgID")
                .is_some_and(|v| v.iter().any(|o| o == org))
    });
    trusted_account || trusted_org
}

/// Checks what every entry must satisfy: its witness is allowed, is one of the requests
/// the entry stands for, describes itself as the request it carries, and has the flags
/// the entry claims. `named` are the accounts the policy names: a public entry's witness
/// comes from none of them.
fn check_entry(entry: &AccessEntry, key_policy: &Policy, subject: &Subject<'_>, named: &[&str]) {
    let witness = &entry.witness;
    let what = format!("{entry:#?}");
    assert!(
        allowed(key_policy, subject, &witness.request),
        "the evaluator does not allow the witness: {what}"
    );
    assert!(
        entry.covers(key_policy, &witness.request),
        "the entry does not cover its own witness: {what}"
    );
    assert!(
        entry
            .actions
            .iter()
            .any(|a| a.eq_ignore_ascii_case(&witness.request.action)),
        "the witness's action is not the entry's: {what}"
    );
    assert_eq!(witness.action, witness.request.action, "{what}");
    assert_eq!(witness.resource, witness.request.resource, "{what}");
    assert_eq!(witness.resource, subject.key_arn, "{what}");
    match &witness.request.caller {
        Caller::Aws { arn, account } => {
            assert_eq!(&witness.caller, arn, "{what}");
            assert_eq!(witness.account.as_ref(), Some(account), "{what}");
        }
        Caller::Service(service) => assert_eq!(&witness.caller, service, "{what}"),
    }
    // The actions, each one the summary is about, and the two flags they make.
    for action in &entry.actions {
        assert!(
            READS_CODE.contains(&action.as_str()) || BREAKS_SCANNING.contains(&action.as_str()),
            "{action} is not an action the summary is about: {what}"
        );
    }
    let any_of = |list: &[&str]| entry.actions.iter().any(|a| list.contains(&a.as_str()));
    assert_eq!(entry.reads_code, any_of(&READS_CODE), "{what}");
    assert_eq!(entry.breaks_scanning, any_of(&BREAKS_SCANNING), "{what}");
    assert!(
        entry.reads_code != entry.breaks_scanning,
        "an entry either reads the code or breaks scanning: {what}"
    );
    // An external entry's witness comes from outside; an entry that is not external has no
    // allowed request from outside, its witness included.
    assert_eq!(
        entry.external,
        !inside(witness, subject),
        "the witness is not what the entry's external flag claims: {what}"
    );
    if entry.public {
        assert!(entry.external, "a public entry is external too: {what}");
        let account = witness_account(witness);
        assert!(
            account.as_deref().is_none_or(|a| !named.contains(&a)),
            "a public entry's witness comes from an account the policy names: {what}"
        );
    }
}

/// The summary's entries for `grantee`, each checked.
fn entries<'s>(
    summary: &'s AccessSummary,
    grantee: &Grantee,
    key_policy: &Policy,
    subject: &Subject<'_>,
    named: &[&str],
) -> Vec<&'s AccessEntry> {
    for entry in &summary.entries {
        check_entry(entry, key_policy, subject, named);
    }
    let found: Vec<&AccessEntry> = summary
        .entries
        .iter()
        .filter(|e| &e.grantee == grantee)
        .collect();
    assert!(
        !found.is_empty(),
        "no entry for {grantee:?} in {:#?}",
        summary.entries
    );
    found
}

/// The one entry for `grantee`, checked with every other.
fn entry<'s>(
    summary: &'s AccessSummary,
    grantee: &Grantee,
    key_policy: &Policy,
    subject: &Subject<'_>,
    named: &[&str],
) -> &'s AccessEntry {
    let found = entries(summary, grantee, key_policy, subject, named);
    assert_eq!(
        found.len(),
        1,
        "more than one entry for {grantee:?}: {found:#?}"
    );
    found[0]
}

/// What the summary grants one grantee, over its entries (an entry either reads the code
/// or breaks scanning, each with a witness of its kind).
#[derive(Debug)]
struct Granted<'s> {
    /// The actions of every entry, in the order of `READS_CODE` and `BREAKS_SCANNING`.
    actions: Vec<String>,
    reads_code: bool,
    breaks_scanning: bool,
    external: bool,
    public: bool,
    entries: Vec<&'s AccessEntry>,
}

/// Every entry for `grantee`, checked with every other, taken together.
fn granted<'s>(
    summary: &'s AccessSummary,
    grantee: &Grantee,
    key_policy: &Policy,
    subject: &Subject<'_>,
    named: &[&str],
) -> Granted<'s> {
    let entries = entries(summary, grantee, key_policy, subject, named);
    let actions = READS_CODE
        .iter()
        .chain(&BREAKS_SCANNING)
        .filter(|a| entries.iter().any(|e| e.actions.iter().any(|b| b == *a)))
        .map(|a| (*a).to_owned())
        .collect();
    Granted {
        actions,
        reads_code: entries.iter().any(|e| e.reads_code),
        breaks_scanning: entries.iter().any(|e| e.breaks_scanning),
        external: entries.iter().any(|e| e.external),
        public: entries.iter().any(|e| e.public),
        entries,
    }
}

/// The findings' codes and severities, each once.
fn codes(summary: &AccessSummary, trust: Trust<'_>) -> Vec<(FindingCode, Severity)> {
    let mut codes: Vec<(FindingCode, Severity)> = access::findings(summary, trust)
        .into_iter()
        .map(|f| (f.code, f.severity))
        .collect();
    codes.sort();
    codes.dedup();
    codes
}

fn account(id: &str) -> Grantee {
    Grantee::Account {
        account_id: id.to_owned(),
    }
}

fn service(name: &str) -> Grantee {
    Grantee::Service {
        service: name.to_owned(),
    }
}

fn principal(arn: &str) -> Grantee {
    Grantee::Principal {
        arn: arn.to_owned(),
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn context<'r>(witness: &'r Witness, key: &str) -> Option<&'r [String]> {
    witness.request.context_value(key)
}

#[test]
fn a_cross_account_root_is_external_not_public() {
    let policy = key_policy(json!([
        own_root(),
        {"Sid": "Partner", "Effect": "Allow",
         "Principal": {"AWS": format!("arn:aws:iam::{OTHER}:root")},
         "Action": ["kms:Decrypt", "kms:DescribeKey"], "Resource": "*"}
    ]));
    let subject = subject(untrusted());
    let summary = access::summarize(&policy, &subject);
    assert!(summary.incomplete.is_empty(), "{summary:#?}");
    let named = [ACCOUNT, OTHER];
    let partner = entry(&summary, &account(OTHER), &policy, &subject, &named);
    assert!(partner.external && !partner.public, "{partner:#?}");
    assert_eq!(partner.actions, strings(&["kms:Decrypt"]));
    assert!(partner.reads_code && !partner.breaks_scanning);
    assert_eq!(partner.sid.as_deref(), Some("Partner"));
    assert_eq!(witness_account(&partner.witness).as_deref(), Some(OTHER));
    // The other account's principals need its own IAM policies too: the evaluator leaves
    // the witness to them.
    assert_eq!(
        decide_bounded(&policy, None, None, &partner.witness.request),
        Decision::IdentityPolicyNotChecked
    );
    let own = granted(&summary, &account(ACCOUNT), &policy, &subject, &named);
    assert!(!own.external && !own.public, "{own:#?}");
    let every: Vec<&str> = READS_CODE.iter().chain(&BREAKS_SCANNING).copied().collect();
    assert_eq!(
        own.actions,
        strings(&every),
        "kms:* allows every action, in order"
    );
    assert!(summary.external() && !summary.public());
    assert_eq!(
        codes(&summary, untrusted()),
        [(FindingCode::ExternalAccess, Severity::SecurityWarning)]
    );
    let deny_external = Trust {
        deny_external_access: true,
        ..untrusted()
    };
    assert_eq!(
        codes(&summary, deny_external),
        [(FindingCode::ExternalAccess, Severity::Error)]
    );

    // The same account, trusted: inside.
    let trusted = [OTHER.to_owned()];
    let trust = Trust {
        trusted_accounts: &trusted,
        ..untrusted()
    };
    let subject = self::subject(trust);
    let summary = access::summarize(&policy, &subject);
    let partner = entry(&summary, &account(OTHER), &policy, &subject, &named);
    assert!(!partner.external && !partner.public, "{partner:#?}");
    assert!(!summary.external() && !summary.public());
    assert!(codes(&summary, trust).is_empty());
}

#[test]
fn anyone_pinned_by_an_organization_is_external_unless_the_organization_is_trusted() {
    let policy = key_policy(json!([
        own_root(),
        {"Sid": "Organization", "Effect": "Allow", "Principal": "*",
         "Action": "kms:Decrypt", "Resource": "*",
         "Condition": {"StringEquals": {"aws:PrincipalOrgID": ORG}}}
    ]));
    let named = [ACCOUNT];
    let subject = subject(untrusted());
    let summary = access::summarize(&policy, &subject);
    assert!(summary.incomplete.is_empty(), "{summary:#?}");
    let anyone = entry(&summary, &Grantee::Anyone, &policy, &subject, &named);
    assert!(anyone.external && !anyone.public, "{anyone:#?}");
    assert_eq!(anyone.actions, strings(&["kms:Decrypt"]));
    assert_eq!(
        context(&anyone.witness, "aws:PrincipalOrgID"),
        Some(&[ORG.to_owned()][..])
    );
    assert!(summary.external() && !summary.public());
    assert_eq!(
        codes(&summary, untrusted()),
        [(FindingCode::ExternalAccess, Severity::SecurityWarning)]
    );

    let trust = Trust {
        organization_id: Some(ORG),
        ..untrusted()
    };
    let subject = self::subject(trust);
    let summary = access::summarize(&policy, &subject);
    let anyone = entry(&summary, &Grantee::Anyone, &policy, &subject, &named);
    assert!(!anyone.external && !anyone.public, "{anyone:#?}");
    assert!(!summary.external() && !summary.public());
    assert!(codes(&summary, trust).is_empty());
}

#[test]
fn anyone_pinned_by_the_caller_account_and_a_service_is_the_account_alone() {
    // An AWS managed key's policy: any principal of the account, through EC2 only.
    let statement = |caller_account: &str| {
        json!({"Sid": "ThroughEc2", "Effect": "Allow", "Principal": {"AWS": "*"},
               "Action": ["kms:Decrypt", "kms:GenerateDataKey*", "kms:CreateGrant", "kms:DescribeKey"],
               "Resource": "*",
               "Condition": {"StringEquals": {"kms:CallerAccount": caller_account,
                                              "kms:ViaService": "ec2.us-east-1.amazonaws.com"}}})
    };
    let subject = subject(untrusted());
    let policy = key_policy(json!([statement(ACCOUNT)]));
    let summary = access::summarize(&policy, &subject);
    assert!(summary.incomplete.is_empty(), "{summary:#?}");
    let anyone = entry(&summary, &Grantee::Anyone, &policy, &subject, &[ACCOUNT]);
    assert!(!anyone.external && !anyone.public, "{anyone:#?}");
    assert!(anyone.reads_code && !anyone.breaks_scanning);
    assert!(anyone.actions.contains(&"kms:CreateGrant".to_owned()));
    assert_eq!(
        context(&anyone.witness, "kms:ViaService"),
        Some(&["ec2.us-east-1.amazonaws.com".to_owned()][..])
    );
    assert_eq!(witness_account(&anyone.witness).as_deref(), Some(ACCOUNT));
    assert!(!summary.external() && !summary.public());

    // Pinned to another account: external, still not public.
    let policy = key_policy(json!([statement(OTHER)]));
    let summary = access::summarize(&policy, &subject);
    let anyone = entry(&summary, &Grantee::Anyone, &policy, &subject, &[OTHER]);
    assert!(anyone.external && !anyone.public, "{anyone:#?}");
    assert_eq!(witness_account(&anyone.witness).as_deref(), Some(OTHER));
}

#[test]
fn a_deny_outside_the_account_cancels_an_allow_to_anyone() {
    let policy = key_policy(json!([
        {"Sid": "Everyone", "Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*"},
        {"Sid": "OnlyThisAccount", "Effect": "Deny", "Principal": "*", "Action": "kms:*",
         "Resource": "*",
         "Condition": {"StringNotEquals": {"aws:PrincipalAccount": ACCOUNT}}}
    ]));
    let subject = subject(untrusted());
    let summary = access::summarize(&policy, &subject);
    assert!(summary.incomplete.is_empty(), "{summary:#?}");
    let anyone = granted(&summary, &Grantee::Anyone, &policy, &subject, &[ACCOUNT]);
    assert!(!anyone.external && !anyone.public, "{anyone:#?}");
    assert!(anyone.reads_code && anyone.breaks_scanning, "{anyone:#?}");
    for entry in &anyone.entries {
        assert_eq!(entry.except_denied_by, strings(&["OnlyThisAccount"]));
        assert_eq!(witness_account(&entry.witness).as_deref(), Some(ACCOUNT));
    }
    // A service principal has no aws:PrincipalAccount, so the deny takes it too.
    assert!(
        summary
            .entries
            .iter()
            .all(|e| !matches!(e.witness.request.caller, Caller::Service(_))),
        "{summary:#?}"
    );
    assert!(!summary.external() && !summary.public());
    assert!(codes(&summary, untrusted()).is_empty());
}

#[test]
fn not_principal_in_an_allow_is_public() {
    let policy = key_policy(json!([
        own_root(),
        {"Sid": "AllButThePartner", "Effect": "Allow",
         "NotPrincipal": {"AWS": format!("arn:aws:iam::{OTHER}:root")},
         "Action": ["kms:Decrypt", "kms:DisableKey"], "Resource": "*"}
    ]));
    let subject = subject(untrusted());
    let summary = access::summarize(&policy, &subject);
    assert!(summary.incomplete.is_empty(), "{summary:#?}");
    let anyone = granted(
        &summary,
        &Grantee::Anyone,
        &policy,
        &subject,
        &[ACCOUNT, OTHER],
    );
    assert!(anyone.external && anyone.public, "{anyone:#?}");
    assert_eq!(anyone.actions, strings(&["kms:Decrypt", "kms:DisableKey"]));
    assert!(anyone.reads_code && anyone.breaks_scanning);
    for entry in &anyone.entries {
        assert!(entry.public, "{entry:#?}");
        assert_eq!(entry.sid.as_deref(), Some("AllButThePartner"));
    }
    assert!(summary.public());
    assert_eq!(
        codes(&summary, untrusted()),
        [(FindingCode::PublicAccess, Severity::Error)]
    );
}

#[test]
fn a_source_address_alone_leaves_anyone_public() {
    let policy = key_policy(json!([
        {"Sid": "Office", "Effect": "Allow", "Principal": "*", "Action": "kms:Decrypt",
         "Resource": "*", "Condition": {"IpAddress": {"aws:SourceIp": "203.0.113.0/24"}}}
    ]));
    let subject = subject(untrusted());
    let summary = access::summarize(&policy, &subject);
    assert!(summary.incomplete.is_empty(), "{summary:#?}");
    let anyone = entry(&summary, &Grantee::Anyone, &policy, &subject, &[]);
    assert!(anyone.external && anyone.public, "{anyone:#?}");
    let address: Ipv4Addr = context(&anyone.witness, "aws:SourceIp")
        .and_then(|v| v.first())
        .expect("the witness carries aws:SourceIp")
        .parse()
        .expect("aws:SourceIp is an IPv4 address");
    assert_eq!(address.octets()[..3], [203, 0, 113], "{anyone:#?}");
    assert_eq!(
        codes(&summary, untrusted()),
        [(FindingCode::PublicAccess, Severity::Error)]
    );
}

#[test]
fn a_wildcard_account_in_a_principal_arn_is_public() {
    let pattern = "arn:aws:iam::*:role/Admin";
    let policy = key_policy(json!([
        own_root(),
        {"Sid": "Admins", "Effect": "Allow", "Principal": "*", "Action": "kms:PutKeyPolicy",
         "Resource": "*", "Condition": {"ArnLike": {"aws:PrincipalArn": pattern}}}
    ]));
    let subject = subject(untrusted());
    let summary = access::summarize(&policy, &subject);
    assert!(summary.incomplete.is_empty(), "{summary:#?}");
    let anyone = entry(&summary, &Grantee::Anyone, &policy, &subject, &[ACCOUNT]);
    assert!(anyone.external && anyone.public, "{anyone:#?}");
    assert_eq!(anyone.actions, strings(&["kms:PutKeyPolicy"]));
    assert!(!anyone.reads_code && anyone.breaks_scanning);
    let Caller::Aws { arn, account } = &anyone.witness.request.caller else {
        panic!("the witness is an IAM principal's: {anyone:#?}");
    };
    assert!(arn_like(pattern, arn), "{arn}");
    assert_ne!(account, ACCOUNT);
    assert!(summary.public());
}

#[test]
fn a_service_principal_is_inside_when_pinned_to_the_account_and_public_when_not() {
    let statement = |condition: Value| {
        let mut statement = json!({"Sid": "AmazonQ", "Effect": "Allow",
            "Principal": {"Service": Q},
            "Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": "*"});
        if !condition.is_null() {
            statement["Condition"] = condition;
        }
        statement
    };
    let subject = subject(untrusted());
    let pinned = key_policy(json!([statement(
        json!({"StringEquals": {"aws:SourceAccount": ACCOUNT}})
    )]));
    let summary = access::summarize(&pinned, &subject);
    assert!(summary.incomplete.is_empty(), "{summary:#?}");
    let q = entry(&summary, &service(Q), &pinned, &subject, &[ACCOUNT]);
    assert!(!q.external && !q.public, "{q:#?}");
    assert_eq!(q.actions, strings(&["kms:Decrypt", "kms:GenerateDataKey"]));
    assert_eq!(q.witness.caller, Q);
    assert_eq!(q.witness.account.as_deref(), Some(ACCOUNT));
    assert!(!summary.external() && !summary.public());

    let unpinned = key_policy(json!([statement(Value::Null)]));
    let summary = access::summarize(&unpinned, &subject);
    let q = entry(&summary, &service(Q), &unpinned, &subject, &[]);
    assert!(q.external && q.public, "{q:#?}");
    assert_eq!(
        codes(&summary, untrusted()),
        [(FindingCode::PublicAccess, Severity::Error)]
    );
}

#[test]
fn a_service_principal_carries_the_principal_keys_of_a_service() {
    // A service principal's requests carry aws:PrincipalIsAWSService "true" and
    // aws:PrincipalServiceName (AWS's global condition keys: "present in the request when
    // the call is made by an AWS service principal"); a statement that checks them lets the
    // service in.
    let policy = key_policy(json!([
        {"Sid": "ServiceOnly", "Effect": "Allow", "Principal": {"Service": Q},
         "Action": "kms:Decrypt", "Resource": "*",
         "Condition": {"Bool": {"aws:PrincipalIsAWSService": "true"},
                       "StringEquals": {"aws:SourceAccount": ACCOUNT}}}
    ]));
    let subject = subject(untrusted());
    let summary = access::summarize(&policy, &subject);
    assert!(summary.incomplete.is_empty(), "{summary:#?}");
    let q = entry(&summary, &service(Q), &policy, &subject, &[ACCOUNT]);
    assert!(!q.external && !q.public, "{q:#?}");
    assert_eq!(q.actions, strings(&["kms:Decrypt"]));
    assert!(
        context(&q.witness, "aws:PrincipalIsAWSService")
            .is_some_and(|v| v.len() == 1 && v[0].eq_ignore_ascii_case("true")),
        "Bool compares ignoring case: {q:#?}"
    );
}

#[test]
fn anyone_pinned_to_a_service_name_is_that_service_alone() {
    // Only a service principal's requests carry aws:PrincipalServiceName; an IAM role's
    // never do (docs/verification.md, "The request context"), so `"*"` pinned to a service
    // name and to this account is that service acting for this account: not external.
    let policy = key_policy(json!([
        {"Sid": "NamedService", "Effect": "Allow", "Principal": "*",
         "Action": "kms:DisableKey", "Resource": "*",
         "Condition": {"StringEquals": {"aws:PrincipalServiceName": Q,
                                        "aws:SourceAccount": ACCOUNT}}}
    ]));
    let subject = subject(untrusted());
    let summary = access::summarize(&policy, &subject);
    assert!(summary.incomplete.is_empty(), "{summary:#?}");
    let anyone = entry(&summary, &Grantee::Anyone, &policy, &subject, &[ACCOUNT]);
    assert_eq!(anyone.actions, strings(&["kms:DisableKey"]));
    assert_eq!(anyone.witness.caller, Q, "{anyone:#?}");
    assert!(!anyone.external && !anyone.public, "{anyone:#?}");
    assert!(!summary.external() && !summary.public());
}

#[test]
fn the_rendered_amazon_q_policies_give_nothing_outside_the_account() {
    for profile in [Profile::AmazonQLambda, Profile::AmazonQCodeRepository] {
        let rendered: Value =
            serde_json::from_str(&render(profile, REGION, ACCOUNT, ROLE, None).unwrap()).unwrap();
        let policy = parse(&rendered);
        let subject = subject(untrusted());
        let summary = access::summarize(&policy, &subject);
        assert!(summary.incomplete.is_empty(), "{profile:?}: {summary:#?}");
        let named = [ACCOUNT];
        for entry in &summary.entries {
            check_entry(entry, &policy, &subject, &named);
            assert!(!entry.external && !entry.public, "{profile:?}: {entry:#?}");
        }
        let q = entries(&summary, &service(Q), &policy, &subject, &named);
        assert!(q.iter().any(|e| e.reads_code), "{profile:?}: {q:#?}");
        assert!(q.iter().all(|e| !e.breaks_scanning), "{profile:?}: {q:#?}");
        let role = entries(&summary, &principal(ROLE), &policy, &subject, &named);
        assert!(role.iter().any(|e| e.reads_code), "{profile:?}: {role:#?}");
        for entry in &role {
            assert_eq!(
                context(&entry.witness, "kms:ViaService"),
                Some(&[INSPECTOR_VIA.to_owned()][..]),
                "{profile:?}: the role's access is through Inspector only: {entry:#?}"
            );
        }
        let root = granted(&summary, &account(ACCOUNT), &policy, &subject, &named);
        for entry in &root.entries {
            assert_eq!(entry.sid.as_deref(), Some("Enable IAM User Permissions"));
        }
        assert!(root.reads_code && root.breaks_scanning, "{root:#?}");
        assert!(!summary.external() && !summary.public());
        assert!(codes(&summary, untrusted()).is_empty(), "{profile:?}");
    }
}

/// How far the evaluator lets `request` through on the subject's policies: 2 allowed
/// outright, 1 allowed if the caller's identity policies (not known) allow it, 0 denied.
fn reach(key_policy: &Policy, subject: &Subject<'_>, request: &Request) -> u8 {
    let configured = matches!(&request.caller,
        Caller::Aws { arn, .. } if Some(arn.as_str()) == subject.principal_arn);
    let (identity, boundary) = if configured {
        (subject.identity_policies, subject.boundary)
    } else {
        (None, None)
    };
    match decide_bounded(key_policy, identity, boundary, request) {
        Decision::Allow => 2,
        Decision::IdentityPolicyNotChecked if identity.is_none() => 1,
        _ => 0,
    }
}

/// `old` and `new`'s diff, each new and removed entry checked: the new policy lets a new
/// entry's witness further than the old (allowed where it was denied, or outright where it
/// needed the caller's identity policies), the old a removed entry's.
fn checked_diff(old: &Policy, new: &Policy, subject: &Subject<'_>) -> access::AccessDiff {
    let diff = access::diff(old, new, subject);
    for entry in &diff.new_access {
        check_entry(entry, new, subject, &[]);
        let request = &entry.witness.request;
        assert!(
            reach(new, subject, request) > reach(old, subject, request),
            "the new policy does not let a new entry's witness further: {entry:#?}"
        );
    }
    for entry in &diff.removed_access {
        check_entry(entry, old, subject, &[]);
        let request = &entry.witness.request;
        assert!(
            reach(old, subject, request) > reach(new, subject, request),
            "the old policy does not let a removed entry's witness further: {entry:#?}"
        );
    }
    diff
}

#[test]
fn reordering_statements_adds_no_access() {
    let rendered: Value =
        serde_json::from_str(&render(Profile::AmazonQLambda, REGION, ACCOUNT, ROLE, None).unwrap())
            .unwrap();
    let mut reversed = rendered.clone();
    reversed["Statement"].as_array_mut().unwrap().reverse();
    let subject = subject(untrusted());
    let diff = checked_diff(&parse(&rendered), &parse(&reversed), &subject);
    assert!(
        diff.new_access.is_empty() && diff.removed_access.is_empty(),
        "{diff:#?}"
    );
    assert!(diff.incomplete.is_empty(), "{diff:#?}");
}

#[test]
fn any_via_service_in_place_of_inspector_is_new_access() {
    let statement = |operator: &str, via: &str| {
        json!([{"Sid": "ThroughInspector", "Effect": "Allow", "Principal": {"AWS": ROLE},
                "Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": "*",
                "Condition": {operator: {"kms:ViaService": via}}}])
    };
    let old = key_policy(statement("StringEquals", INSPECTOR_VIA));
    let new = key_policy(statement("StringLike", "*"));
    let subject = subject(untrusted());
    let diff = checked_diff(&old, &new, &subject);
    assert!(diff.incomplete.is_empty(), "{diff:#?}");
    assert!(diff.removed_access.is_empty(), "{diff:#?}");
    let role = diff
        .new_access
        .iter()
        .find(|e| e.grantee == principal(ROLE))
        .unwrap_or_else(|| panic!("no new access for the role: {diff:#?}"));
    assert!(!role.external && !role.public, "{role:#?}");
    assert_eq!(role.sid.as_deref(), Some("ThroughInspector"));
    let via = context(&role.witness, "kms:ViaService")
        .expect("the new access is through some service: StringLike \"*\" needs the key");
    assert_ne!(via, [INSPECTOR_VIA.to_owned()], "{role:#?}");

    // And back: the same access, removed.
    let back = checked_diff(&new, &old, &subject);
    assert!(back.new_access.is_empty(), "{back:#?}");
    assert!(!back.removed_access.is_empty(), "{back:#?}");
}

#[test]
fn naming_a_role_where_the_account_delegated_is_new_access() {
    // The old policy lets the role in if its identity policies allow (they are not
    // known); the new one whatever they say.
    let old = key_policy(json!([own_root()]));
    let new = key_policy(json!([
        own_root(),
        {"Sid": "TheRole", "Effect": "Allow", "Principal": {"AWS": ROLE},
         "Action": "kms:Decrypt", "Resource": "*"}
    ]));
    let subject = subject(untrusted());
    let diff = checked_diff(&old, &new, &subject);
    assert!(diff.removed_access.is_empty(), "{diff:#?}");
    let role = diff
        .new_access
        .iter()
        .find(|e| e.grantee == principal(ROLE))
        .unwrap_or_else(|| panic!("no new access for the role: {diff:#?}"));
    assert_eq!(role.actions, strings(&["kms:Decrypt"]));
    assert_eq!(reach(&old, &subject, &role.witness.request), 1);
    assert_eq!(reach(&new, &subject, &role.witness.request), 2);

    // With the role's identity policies known to allow it, nothing is new.
    let text = json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "kms:*", "Resource": "*"}
    ]})
    .to_string();
    let (parsed, findings) = policy::analyze(Document {
        kind: DocumentKind::IdentityPolicy,
        name: "identity_policies[0]",
        text: &text,
    });
    let identity = [parsed.unwrap_or_else(|| panic!("{findings:?}"))];
    let known = Subject {
        identity_policies: Some(&identity),
        ..subject
    };
    let diff = checked_diff(&old, &new, &known);
    assert!(
        diff.new_access.is_empty() && diff.removed_access.is_empty(),
        "{diff:#?}"
    );
}

#[test]
fn ignoring_the_case_of_an_account_id_adds_no_access() {
    // Digits have no case: StringEqualsIgnoreCase on an account id matches what
    // StringEquals does.
    let statements = |operator: &str| {
        json!([
            {"Sid": "AmazonQ", "Effect": "Allow", "Principal": {"Service": Q},
             "Action": "kms:Decrypt", "Resource": "*",
             "Condition": {operator: {"aws:SourceAccount": ACCOUNT}}},
            {"Sid": "ThisAccount", "Effect": "Allow", "Principal": "*",
             "Action": "kms:Decrypt", "Resource": "*",
             "Condition": {operator: {"kms:CallerAccount": ACCOUNT}}}
        ])
    };
    let old = key_policy(statements("StringEquals"));
    let new = key_policy(statements("StringEqualsIgnoreCase"));
    let subject = subject(untrusted());
    let diff = checked_diff(&old, &new, &subject);
    assert!(
        diff.new_access.is_empty() && diff.removed_access.is_empty(),
        "{diff:#?}"
    );
    assert!(diff.incomplete.is_empty(), "{diff:#?}");
    // Both policies keep their access inside the account.
    for policy in [&old, &new] {
        let summary = access::summarize(policy, &subject);
        assert!(!summary.entries.is_empty(), "{summary:#?}");
        for entry in &summary.entries {
            check_entry(entry, policy, &subject, &[ACCOUNT]);
            assert!(!entry.external && !entry.public, "{entry:#?}");
        }
    }
}

#[test]
fn a_policy_variable_relating_two_values_is_incomplete_naming_its_statement() {
    let policy = key_policy(json!([
        own_root(),
        {"Sid": "OwnUserOnly", "Effect": "Allow", "Principal": "*", "Action": "kms:Decrypt",
         "Resource": "*",
         "Condition": {"StringEquals": {
             "aws:PrincipalArn": format!("arn:aws:iam::{ACCOUNT}:user/${{aws:username}}")}}}
    ]));
    let subject = subject(untrusted());
    let summary = access::summarize(&policy, &subject);
    let statement = &policy.statements[1];
    let gap = summary
        .incomplete
        .iter()
        .find(|i| i.location == statement.location)
        .unwrap_or_else(|| {
            panic!("the statement with the variable is not incomplete: {summary:#?}")
        });
    assert_eq!(gap.sid.as_deref(), Some("OwnUserOnly"));
    assert!(!gap.reason.is_empty());
    // The other statement is still answered for.
    let root = granted(&summary, &account(ACCOUNT), &policy, &subject, &[ACCOUNT]);
    assert!(!root.external && !root.public, "{root:#?}");
    let findings = access::findings(&summary, untrusted());
    let incomplete: Vec<_> = findings
        .iter()
        .filter(|f| f.code == FindingCode::AnalysisIncomplete)
        .collect();
    assert_eq!(incomplete.len(), 1, "{findings:#?}");
    assert_eq!(incomplete[0].sid.as_deref(), Some("OwnUserOnly"));
    assert_eq!(incomplete[0].location.as_ref(), Some(&statement.location));
}
