//! The differential test: random key and identity policies, each a few mutations of the
//! policies a profile needs, decided for every request of the profile by the verifier's
//! evaluator and by an independent IAM simulator (the npm package
//! `@cloud-copilot/iam-simulate`, driven by tests/oracle/simulate.mjs, one Node process per
//! batch). Every decision must agree, except where the simulator deviates from what the AWS
//! documentation says: those deviations are listed in `DEVIATIONS`, each recognised by
//! re-deciding the request the simulator's way, and counted.
//!
//! `DIFFERENTIAL_CASES` (default 2,000) sets the number of cases and `DIFFERENTIAL_SEED`
//! the seed; the long run and its figures are in RELIABILITY.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    collections::BTreeMap,
    io::Write as _,
    process::{Command, Stdio},
};

use inspector_keyd::verify::{
    Profile,
    condition::{Operator, SetQualifier},
    eval::{self, Caller, Decision, Request},
    policy::{self, Document, DocumentKind, PrincipalElement},
    profile::Params,
    render, variables,
};
use serde_json::{Value, json};

const REGION: &str = "us-east-1";
const ACCOUNT: &str = "111122223333";
const ROLE: &str = "arn:aws:iam::111122223333:role/inspector-keyd";
const USER: &str = "arn:aws:iam::111122223333:user/scanner";
const OTHER_ROLE: &str = "arn:aws:iam::111122223333:role/other";
const KEY_ARN: &str = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
const OTHER_KEY_ARN: &str =
    "arn:aws:kms:us-east-1:111122223333:key/0000abcd-12ab-34cd-56ef-1234567890ab";
/// The session name the simulator is given for the role (the verifier knows none).
const SESSION: &str = "inspector-keyd-session";

/// A deviation of the simulator from the AWS documentation: the kind, what the simulator
/// does, and the documentation that shows it wrong.
struct Deviation {
    kind: &'static str,
    what: &'static str,
    documentation: &'static str,
}

const DEVIATIONS: [Deviation; 5] = [
    Deviation {
        kind: "not-principal-exempts-listed-role-or-account",
        what: "a Deny with NotPrincipal exempts a role's session when it lists the role or the account, and an IAM user listed without its account",
        documentation: "https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_notprincipal.html (\"you must also specify the account ARN of the not-denied principal\"; for a role, the assumed-role session ARN, the role ARN and the account)",
    },
    Deviation {
        kind: "negated-operator-with-valueless-variable-fails",
        what: "a negated string or ARN operator (StringNotEquals, StringNotLike, ArnNotLike...) whose value holds a variable with no value does not match",
        documentation: "https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_variables.html#policy-vars-no-value (\"Inverted condition operators like StringNotEquals or StringNotLike do match against a null value\")",
    },
    Deviation {
        kind: "variables-substituted-without-version-2012-10-17",
        what: "policy variables are substituted in a document whose Version is 2008-10-17 or missing",
        documentation: "https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_version.html (without \"2012-10-17\" the version defaults to 2008-10-17, where \"policy variables\" are not recognized, \"such as ${aws:username}\" treated as literal strings)",
    },
    Deviation {
        kind: "arn-operator-splits-variables-at-colons",
        what: "an ARN operator's value is split into its six parts before its variables are substituted, so a variable such as ${aws:PrincipalAccount} (whose name has a colon) breaks the value and it matches no ARN",
        documentation: "https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_variables.html#policy-vars-conditionelement (\"You can use a policy variable for Condition values in any condition that involves the string operators or the ARN operators\")",
    },
    Deviation {
        kind: "for-any-value-if-exists-on-absent-key-fails",
        what: "ForAnyValue: with an ...IfExists operator does not match when the request lacks the key",
        documentation: "https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_condition_operators.html#Conditions_IfExists (\"You can add IfExists to the end of any condition operator name except the Null condition ... If the key is not present, evaluate the condition element as true.\")",
    },
];

/// The simulator's ways, each a rewrite of the parsed policies for one request; the index
/// is the deviation's in `DEVIATIONS`.
type Rewrite = fn(&policy::Policy, &Request) -> policy::Policy;

/// SplitMix64: small, seeded, the same sequence on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn some<T: Clone>(&mut self, items: &[T], most: usize) -> Vec<T> {
        let n = 1 + self.below(most);
        (0..n).map(|_| self.pick(items).clone()).collect()
    }
}

/// One generated case: the policies, the principal, and what was done to them.
#[derive(Clone)]
struct Case {
    profile: Profile,
    principal: &'static str,
    key_policy: Value,
    identity_policies: Vec<Value>,
    mutations: Vec<String>,
}

fn statements(document: &mut Value) -> &mut Vec<Value> {
    let root = document.as_object_mut().unwrap();
    let statement = root
        .entry("Statement")
        .or_insert_with(|| Value::Array(Vec::new()));
    if statement.is_object() {
        *statement = Value::Array(vec![statement.clone()]);
    }
    statement.as_array_mut().unwrap()
}

const ACTIONS: [&str; 14] = [
    "kms:*",
    "kms:Decrypt",
    "kms:Encrypt",
    "kms:Gen*",
    "kms:GenerateDataKey*",
    "KMS:DECRYPT",
    "kms:describe*",
    "kms:Describe?ey",
    "kms:CreateGrant",
    "kms:RetireGrant",
    "kms:GenerateDataKeyWithoutPlaintext",
    "kms:DescribeKey",
    "kms:*Grant",
    "*",
];

/// Conditions on the keys a profile's requests carry (or do not), as (operator, key, value).
const CONDITIONS: [(&str, &str, &str); 30] = [
    ("Bool", "aws:ViaAWSService", "true"),
    ("Bool", "aws:ViaAWSService", "false"),
    ("Bool", "kms:GrantIsForAWSResource", "true"),
    ("Bool", "kms:GrantIsForAWSResource", "false"),
    ("Bool", "aws:SecureTransport", "false"),
    ("BoolIfExists", "aws:SecureTransport", "false"),
    ("Bool", "aws:PrincipalIsAWSService", "true"),
    ("StringEquals", "aws:PrincipalType", "AssumedRole"),
    ("StringEquals", "aws:PrincipalType", "User"),
    ("StringNotEquals", "aws:RequestedRegion", "us-east-1"),
    ("StringEquals", "aws:RequestedRegion", "eu-west-1"),
    (
        "StringEquals",
        "aws:PrincipalServiceName",
        "q.amazonaws.com",
    ),
    ("Null", "kms:ViaService", "true"),
    ("Null", "kms:ViaService", "false"),
    ("Null", "aws:SourceArn", "true"),
    ("StringEquals", "aws:username", "scanner"),
    ("StringEquals", "aws:ResourceAccount", "111122223333"),
    ("StringNotEquals", "aws:PrincipalAccount", "111122223333"),
    ("StringEquals", "kms:CallerAccount", "111122223333"),
    ("ArnEquals", "aws:PrincipalArn", ROLE),
    ("ArnNotEquals", "aws:PrincipalArn", ROLE),
    (
        "ArnLike",
        "aws:PrincipalArn",
        "arn:aws:iam::111122223333:role/*",
    ),
    ("StringLike", "kms:ViaService", "inspector2.*"),
    (
        "StringEquals",
        "kms:ViaService",
        "codeguru-security.us-east-1.amazonaws.com",
    ),
    (
        "StringNotEqualsIfExists",
        "aws:SourceAccount",
        "444455556666",
    ),
    (
        "ForAnyValue:StringEquals",
        "kms:GrantOperations",
        "CreateGrant",
    ),
    (
        "ForAllValues:StringEquals",
        "kms:GrantOperations",
        "Decrypt",
    ),
    (
        "ForAnyValue:StringLike",
        "kms:EncryptionContextKeys",
        "aws:qdeveloper:*",
    ),
    (
        "StringEqualsIgnoreCase",
        "kms:ViaService",
        "INSPECTOR2.US-EAST-1.AMAZONAWS.COM",
    ),
    (
        "StringLike",
        "kms:EncryptionContext:aws:qdeveloper:lambda-codescan-scope",
        "1111*",
    ),
];

/// Conditions whose values hold policy variables.
const VARIABLE_CONDITIONS: [(&str, &str, &str); 14] = [
    (
        "StringEquals",
        "kms:CallerAccount",
        "${aws:PrincipalAccount}",
    ),
    (
        "StringNotEquals",
        "kms:CallerAccount",
        "${aws:PrincipalAccount}",
    ),
    (
        "StringLike",
        "aws:PrincipalArn",
        "arn:aws:iam::${aws:PrincipalAccount}:role/*",
    ),
    (
        "ArnLike",
        "aws:PrincipalArn",
        "arn:aws:iam::${aws:PrincipalAccount}:*",
    ),
    (
        "StringEquals",
        "aws:SourceAccount",
        "${aws:ResourceAccount}",
    ),
    (
        "StringEquals",
        "kms:ViaService",
        "inspector2.${aws:RequestedRegion}.amazonaws.com",
    ),
    (
        "StringEquals",
        "aws:ResourceAccount",
        "${aws:username, '111122223333'}",
    ),
    ("StringEquals", "aws:PrincipalAccount", "${aws:userid}"),
    ("StringNotEquals", "aws:PrincipalAccount", "${aws:userid}"),
    ("StringLike", "kms:ViaService", "${*}"),
    ("StringEquals", "kms:CallerAccount", "${KMS:calleraccount}"),
    (
        "StringEquals",
        "aws:PrincipalType",
        "${aws:username, 'AssumedRole'}",
    ),
    (
        "ArnEquals",
        "aws:SourceArn",
        "arn:aws:qdeveloper:${aws:RequestedRegion}:${aws:SourceAccount}:scans/inspector-keyd-check",
    ),
    ("StringNotLike", "aws:PrincipalArn", "${aws:PrincipalArn}"),
];

const RESOURCES: [&str; 8] = [
    "*",
    KEY_ARN,
    OTHER_KEY_ARN,
    "arn:aws:kms:*:111122223333:key/*",
    "arn:aws:kms:us-east-1:111122223333:key/*",
    "arn:aws:kms:us-east-1:111122223333:alias/*",
    "arn:aws:kms:us-east-1:111122223333:key/${aws:username, '*'}",
    "arn:aws:kms:${aws:RequestedRegion}:111122223333:key/*",
];

fn add_condition(statement: &mut Value, operator: &str, key: &str, value: &str) {
    let object = statement.as_object_mut().unwrap();
    let condition = object
        .entry("Condition")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .unwrap();
    let entries = condition
        .entry(operator)
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .unwrap();
    entries.insert(key.to_owned(), Value::String(value.to_owned()));
}

/// The (operator, key) pairs of a statement's conditions.
fn condition_entries(statement: &Value) -> Vec<(String, String)> {
    statement
        .get("Condition")
        .and_then(Value::as_object)
        .map(|c| {
            c.iter()
                .flat_map(|(op, keys)| {
                    keys.as_object()
                        .into_iter()
                        .flatten()
                        .map(move |(k, _)| (op.clone(), k.clone()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Renames an operator of a statement's condition block (merging into an existing one).
fn rename_operator(statement: &mut Value, from: &str, to: &str) {
    let Some(condition) = statement
        .get_mut("Condition")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    if from == to {
        return;
    }
    if let Some(Value::Object(entries)) = condition.shift_remove(from) {
        let target = condition
            .entry(to)
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .unwrap();
        target.extend(entries);
    }
}

fn flip_case(rng: &mut Rng, text: &str) -> String {
    text.chars()
        .map(|c| {
            if rng.chance(50) {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

/// One random mutation of the case's policies; its name.
fn mutate(rng: &mut Rng, case: &mut Case) -> String {
    let in_key_policy = case.identity_policies.is_empty() || rng.chance(60);
    let principal = case.principal;
    let document = if in_key_policy {
        &mut case.key_policy
    } else {
        let i = rng.below(case.identity_policies.len());
        &mut case.identity_policies[i]
    };
    let kind = rng.below(15);
    let list = statements(document);
    let target = (!list.is_empty()).then(|| rng.below(list.len()));
    match (kind, target) {
        (0, Some(t)) => {
            list[t].as_object_mut().unwrap().shift_remove("NotAction");
            list[t]["Action"] = json!(rng.some(&ACTIONS, 3));
            "action".into()
        }
        (1, Some(t)) => {
            let statement = list[t].as_object_mut().unwrap();
            statement.shift_remove("Action");
            let not: Vec<&str> = rng.some(&ACTIONS[1..13], 2).into_iter().collect();
            statement.insert("NotAction".into(), json!(not));
            "not-action".into()
        }
        (2, Some(t)) => {
            let entries = condition_entries(&list[t]);
            if entries.is_empty() {
                return "set-operator (none)".into();
            }
            let (op, _) = rng.pick(&entries).clone();
            let base = op
                .trim_start_matches("ForAllValues:")
                .trim_start_matches("ForAnyValue:");
            let to = match rng.below(3) {
                0 => format!("ForAllValues:{base}"),
                1 => format!("ForAnyValue:{base}"),
                _ => base.to_owned(),
            };
            if base.starts_with("Null") {
                return "set-operator (null)".into();
            }
            rename_operator(&mut list[t], &op, &to);
            format!("set-operator {op} -> {to}")
        }
        (3, Some(t)) => {
            let entries = condition_entries(&list[t]);
            let Some((op, _)) = (!entries.is_empty()).then(|| rng.pick(&entries).clone()) else {
                return "if-exists (none)".into();
            };
            if op.contains("Null") || op.ends_with("IfExists") {
                return "if-exists (skipped)".into();
            }
            rename_operator(&mut list[t], &op, &format!("{op}IfExists"));
            format!("if-exists {op}")
        }
        (4, Some(t)) => {
            let entries = condition_entries(&list[t]);
            let Some((op, _)) = (!entries.is_empty()).then(|| rng.pick(&entries).clone()) else {
                return "negate (none)".into();
            };
            let negated = [
                ("StringEquals", "StringNotEquals"),
                ("StringLike", "StringNotLike"),
                ("ArnLike", "ArnNotLike"),
                ("ArnEquals", "ArnNotEquals"),
            ]
            .iter()
            .find_map(|(a, b)| {
                if op.ends_with(a) || op.contains(&format!("{a}IfExists")) {
                    Some(op.replacen(a, b, 1))
                } else if op.contains(b) {
                    Some(op.replacen(b, a, 1))
                } else {
                    None
                }
            });
            match negated {
                Some(to) => {
                    rename_operator(&mut list[t], &op, &to);
                    format!("negate {op} -> {to}")
                }
                None => "negate (skipped)".into(),
            }
        }
        (5, _) | (6, _) if in_key_policy => {
            let not_principal = kind == 6;
            let mut statement = json!({
                "Sid": format!("Deny{}", rng.next() % 1000),
                "Effect": "Deny",
                "Action": rng.some(&ACTIONS, 2),
                "Resource": "*",
            });
            if not_principal {
                let names = rng.some(
                    &[
                        principal,
                        "arn:aws:iam::111122223333:root",
                        ACCOUNT,
                        OTHER_ROLE,
                    ],
                    3,
                );
                statement["NotPrincipal"] = json!({"AWS": names});
            } else {
                statement["Principal"] = match rng.below(4) {
                    0 => json!("*"),
                    1 => json!({"AWS": principal}),
                    2 => json!({"AWS": ACCOUNT}),
                    _ => json!({"Service": "q.amazonaws.com"}),
                };
            }
            if rng.chance(70) {
                let (op, key, value) = *rng.pick(&CONDITIONS);
                add_condition(&mut statement, op, key, value);
            }
            list.push(statement);
            if not_principal {
                "deny with NotPrincipal".into()
            } else {
                "deny".into()
            }
        }
        (5, _) | (6, _) => {
            let mut statement = json!({
                "Sid": format!("Deny{}", rng.next() % 1000),
                "Effect": "Deny",
                "Action": rng.some(&ACTIONS, 2),
                "Resource": "*",
            });
            if rng.chance(70) {
                let (op, key, value) = *rng.pick(&CONDITIONS);
                add_condition(&mut statement, op, key, value);
            }
            list.push(statement);
            "identity deny".into()
        }
        (7, Some(t)) if in_key_policy => {
            let to = match rng.below(7) {
                0 => json!({"AWS": principal}),
                1 => json!({"AWS": "arn:aws:iam::111122223333:root"}),
                2 => json!({"AWS": ACCOUNT}),
                3 => json!({"AWS": OTHER_ROLE}),
                4 => json!("*"),
                5 => json!({"Service": "q.amazonaws.com"}),
                _ => json!({"AWS": [OTHER_ROLE, principal]}),
            };
            list[t]
                .as_object_mut()
                .unwrap()
                .shift_remove("NotPrincipal");
            list[t]["Principal"] = to.clone();
            format!("principal {to}")
        }
        (8, Some(t)) => {
            let statement = list[t].as_object_mut().unwrap();
            if rng.chance(25) {
                statement.shift_remove("Resource");
                statement.insert(
                    "NotResource".into(),
                    json!(rng.pick(&[OTHER_KEY_ARN, KEY_ARN, "arn:aws:kms:*:*:alias/*"])),
                );
                "not-resource".into()
            } else {
                let resource = *rng.pick(&RESOURCES);
                statement.shift_remove("NotResource");
                statement.insert("Resource".into(), json!(resource));
                format!("resource {resource}")
            }
        }
        (9, Some(t)) => {
            let (op, key, value) = *rng.pick(&VARIABLE_CONDITIONS);
            add_condition(&mut list[t], op, key, value);
            format!("variable {op} {key} {value}")
        }
        (10, Some(t)) => {
            let (op, key, value) = *rng.pick(&CONDITIONS);
            add_condition(&mut list[t], op, key, value);
            format!("condition {op} {key} {value}")
        }
        (11, Some(t)) => {
            // Case: of a condition key name, or of the actions.
            let entries = condition_entries(&list[t]);
            if !entries.is_empty() && rng.chance(60) {
                let (op, key) = rng.pick(&entries).clone();
                let renamed = flip_case(rng, &key);
                let block = list[t]["Condition"][&op].as_object_mut().unwrap();
                if let Some(value) = block.shift_remove(&key) {
                    block.insert(renamed.clone(), value);
                }
                format!("case {key} -> {renamed}")
            } else if let Some(Value::String(action)) = list[t].get("Action").cloned() {
                let flipped = flip_case(rng, &action);
                list[t]["Action"] = json!(flipped);
                format!("case {action} -> {flipped}")
            } else {
                "case (skipped)".into()
            }
        }
        (12, _) => {
            let root = document.as_object_mut().unwrap();
            if rng.chance(50) {
                root.insert("Version".into(), json!("2008-10-17"));
                "version 2008-10-17".into()
            } else {
                root.shift_remove("Version");
                "no version".into()
            }
        }
        (13, Some(t)) if list.len() > 1 => {
            list.remove(t);
            "remove statement".into()
        }
        (_, Some(t)) => {
            // A value of the profile's own conditions turned into a variable.
            let entries = condition_entries(&list[t]);
            let Some((op, key)) = (!entries.is_empty()).then(|| rng.pick(&entries).clone()) else {
                return "own variable (none)".into();
            };
            if op.contains("Null") {
                // Null takes true or false, never a variable.
                return "own variable (skipped)".into();
            }
            let value = match key.to_ascii_lowercase().as_str() {
                "aws:sourceaccount" => "${aws:ResourceAccount}",
                "kms:viaservice" => "inspector2.${aws:RequestedRegion}.amazonaws.com",
                "aws:sourcearn" => {
                    "arn:aws:qdeveloper:${aws:RequestedRegion}:${aws:PrincipalAccount}:scans/*"
                }
                k if k.starts_with("kms:encryptioncontext:") => {
                    "${aws:ResourceAccount, '111122223333'}"
                }
                _ => return "own variable (skipped)".into(),
            };
            list[t]["Condition"][&op][&key] = json!(value);
            format!("own variable {op} {key} {value}")
        }
        _ => "nothing".into(),
    }
}

fn base_case(rng: &mut Rng) -> Case {
    let profile = *rng.pick(&Profile::ALL);
    let principal = if rng.chance(80) { ROLE } else { USER };
    let rendered: Value =
        serde_json::from_str(&render(profile, REGION, ACCOUNT, principal, None).unwrap()).unwrap();
    let allow_all = json!({"Version": "2012-10-17", "Statement": [
        {"Sid": "AllowKms", "Effect": "Allow", "Action": "kms:*", "Resource": "*"}
    ]});
    let (key_policy, identity_policies) = match profile {
        Profile::CodeguruGrants => {
            let delegation = json!({"Version": "2012-10-17", "Statement": [
                {"Sid": "Enable IAM User Permissions", "Effect": "Allow",
                 "Principal": {"AWS": "arn:aws:iam::111122223333:root"}, "Action": "kms:*", "Resource": "*"}
            ]});
            (delegation, vec![rendered])
        }
        _ => {
            let identity = match rng.below(3) {
                0 => Vec::new(),
                1 => vec![allow_all],
                _ => vec![json!({"Version": "2012-10-17", "Statement": [
                    {"Sid": "AllowDecrypt", "Effect": "Allow", "Action": ["kms:Decrypt", "kms:DescribeKey"], "Resource": KEY_ARN}
                ]})],
            };
            (rendered, identity)
        }
    };
    Case {
        profile,
        principal,
        key_policy,
        identity_policies,
        mutations: Vec::new(),
    }
}

fn generate(rng: &mut Rng) -> Case {
    let mut case = base_case(rng);
    for _ in 0..1 + rng.below(4) {
        let mutation = mutate(rng, &mut case);
        case.mutations.push(mutation);
    }
    case
}

fn parse(document: &Value, kind: DocumentKind) -> policy::Policy {
    let text = serde_json::to_string_pretty(document).unwrap();
    let (parsed, findings) = policy::analyze(Document {
        kind,
        name: "policy",
        text: &text,
    });
    parsed.unwrap_or_else(|| panic!("generated policy does not parse: {findings:?}\n{text}"))
}

fn requests(case: &Case) -> Vec<Request> {
    case.profile
        .requirements(&Params {
            region: REGION,
            account_id: ACCOUNT,
            principal_arn: case.principal,
            key_arn: KEY_ARN,
        })
        .required
        .into_iter()
        .map(|r| r.request)
        .collect()
}

/// The principal the simulator is given: a role acts as one of its sessions.
fn oracle_principal(caller: &Caller) -> String {
    match caller {
        Caller::Service(service) => service.clone(),
        Caller::Aws { arn, account } => match arn.split_once(":role/") {
            Some((_, name)) => format!("arn:aws:sts::{account}:assumed-role/{name}/{SESSION}"),
            None => arn.clone(),
        },
    }
}

fn oracle_request(request: &Request) -> Value {
    let context: serde_json::Map<String, Value> = request
        .context
        .iter()
        .map(|(k, v)| {
            let multi = policy::is_multi_valued(k);
            let value = if multi || v.len() != 1 {
                json!(v)
            } else {
                json!(v[0])
            };
            (k.clone(), value)
        })
        .collect();
    json!({
        "principal": oracle_principal(&request.caller),
        "action": request.action,
        "resource": request.resource,
        "context": context,
        // The principal's identity policies govern its own requests only.
        "identity": matches!(request.caller, Caller::Aws { .. }),
    })
}

fn name(decision: &Decision) -> &'static str {
    match decision {
        Decision::Allow => "Allowed",
        Decision::ExplicitDeny { .. } => "ExplicitlyDenied",
        Decision::ImplicitDeny => "ImplicitlyDenied",
        Decision::IdentityPolicyNotChecked => "IdentityPolicyNotChecked",
    }
}

/// NotPrincipal the simulator's way: a statement whose NotPrincipal lists the caller (or its
/// account) exempts it.
fn listed_not_principal_exempts(policy: &policy::Policy, request: &Request) -> policy::Policy {
    let mut lenient = policy.clone();
    lenient.statements.retain(|s| match &s.principal {
        PrincipalElement::NotPrincipal(listed) => {
            !eval::not_principal_lists_without_exempting(listed, &request.caller)
        }
        _ => true,
    });
    lenient
}

/// A condition that never holds, in place of `condition`.
fn never(condition: &policy::Condition) -> policy::Condition {
    policy::Condition {
        operator: Operator::parse("Null").unwrap(),
        key: "x:never-present".into(),
        values: vec!["false".into()],
        variables: false,
        line: condition.line,
        column: condition.column,
    }
}

/// A negated operator the simulator's way: when the request has the key and a value's
/// variable has no value, the condition does not match.
fn valueless_variables_fail_negated(policy: &policy::Policy, request: &Request) -> policy::Policy {
    let mut policy = policy.clone();
    for statement in &mut policy.statements {
        for condition in &mut statement.conditions {
            let negated = format!("{:?}", condition.operator.base).contains("Not");
            let valueless = condition
                .values
                .iter()
                .any(|v| variables::substitute(v, |k| request.context_value(k)).is_none());
            if condition.variables
                && negated
                && valueless
                && request.context_value(&condition.key).is_some()
            {
                *condition = never(condition);
            }
        }
    }
    policy
}

/// Policy variables the simulator's way: substituted whatever the document's version.
fn variables_in_every_version(policy: &policy::Policy, _: &Request) -> policy::Policy {
    let mut policy = policy.clone();
    for statement in &mut policy.statements {
        let has = |v: &String| variables::has_variables(v);
        statement.resource_variables = match &statement.resources {
            policy::Names::Only(r) | policy::Names::AllExcept(r) => r.iter().any(has),
        };
        for condition in &mut statement.conditions {
            condition.variables =
                condition.operator.substitutes_variables() && condition.values.iter().any(has);
        }
    }
    policy
}

/// Whether a value holds a variable whose name has a colon (`${aws:...}`).
fn has_colon_variable(value: &str) -> bool {
    value.match_indices("${").any(|(i, _)| {
        value[i..]
            .find('}')
            .is_some_and(|end| value[i..i + end].contains(':'))
    })
}

/// ARN operators the simulator's way: a value with a `${aws:...}` variable matches no ARN.
fn arn_values_with_variables_match_nothing(policy: &policy::Policy, _: &Request) -> policy::Policy {
    let mut policy = policy.clone();
    for statement in &mut policy.statements {
        for condition in &mut statement.conditions {
            let arn = format!("{:?}", condition.operator.base).starts_with("Arn");
            if arn && condition.variables {
                for value in &mut condition.values {
                    if has_colon_variable(value) {
                        *value = "matches-no-arn".into();
                    }
                }
            }
        }
    }
    policy
}

/// `ForAnyValue:...IfExists` the simulator's way: false when the request lacks the key.
fn for_any_value_if_exists_fails_when_absent(
    policy: &policy::Policy,
    request: &Request,
) -> policy::Policy {
    let mut policy = policy.clone();
    for statement in &mut policy.statements {
        for condition in &mut statement.conditions {
            let operator = condition.operator;
            if operator.set == Some(SetQualifier::ForAnyValue)
                && operator.if_exists
                && request.context_value(&condition.key).is_none()
            {
                *condition = never(condition);
            }
        }
    }
    policy
}

const REWRITES: [Rewrite; 5] = [
    listed_not_principal_exempts,
    valueless_variables_fail_negated,
    variables_in_every_version,
    arn_values_with_variables_match_nothing,
    for_any_value_if_exists_fails_when_absent,
];

/// The deviation that explains the simulator's answer: the first whose rewrite gives it,
/// else all of them together (`None` when nothing does).
fn explain(
    key_policy: &policy::Policy,
    identity: &[policy::Policy],
    request: &Request,
    theirs: &str,
) -> Option<&'static str> {
    let decide_with = |rewrites: &[Rewrite]| {
        let apply = |p: &policy::Policy| {
            rewrites
                .iter()
                .fold(p.clone(), |p, rewrite| rewrite(&p, request))
        };
        let identity: Vec<policy::Policy> = identity.iter().map(apply).collect();
        eval::decide(&apply(key_policy), Some(&identity), request)
    };
    for (rewrite, deviation) in REWRITES.iter().zip(&DEVIATIONS) {
        if name(&decide_with(&[*rewrite])) == theirs {
            return Some(deviation.kind);
        }
    }
    // Together: the version first, so that the other rewrites see the variables it enables.
    let all = [
        variables_in_every_version,
        listed_not_principal_exempts,
        valueless_variables_fail_negated,
        arn_values_with_variables_match_nothing,
        for_any_value_if_exists_fails_when_absent,
    ];
    (name(&decide_with(&all)) == theirs).then_some("several-known-deviations")
}

/// Decides a batch of cases with the simulator.
fn oracle(cases: &[Case], per_case_requests: &[Vec<Request>]) -> Vec<Vec<String>> {
    let node = which("node");
    let module = std::env::var_os("ORACLE_PACKAGE_JSON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(".tools/node/node_modules/@cloud-copilot/iam-simulate/package.json")
        });
    assert!(
        module.is_file(),
        "@cloud-copilot/iam-simulate is missing ({} not found): run scripts/install-test-tools.sh (or set ORACLE_PACKAGE_JSON)",
        module.display()
    );
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oracle/simulate.mjs");
    let batch = json!({"cases": cases.iter().zip(per_case_requests).map(|(case, requests)| json!({
        "key_policy": case.key_policy,
        "identity_policies": case.identity_policies,
        "resource_account": ACCOUNT,
        "requests": requests.iter().map(oracle_request).collect::<Vec<_>>(),
    })).collect::<Vec<_>>()});
    let mut child = Command::new(node)
        .arg(script)
        .env("ORACLE_PACKAGE", module.parent().unwrap())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = serde_json::to_vec(&batch).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        output.status.success(),
        "the oracle failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// `node` from PATH; the test fails without it.
fn which(program: &str) -> std::path::PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!("{program} is missing from PATH: the differential test drives the IAM simulator with Node.js (scripts/install-test-tools.sh installs the simulator; install Node.js 18 or later)")
        })
}

#[test]
fn the_evaluator_agrees_with_an_independent_iam_simulator() {
    let count: usize = std::env::var("DIFFERENTIAL_CASES")
        .map(|v| v.parse().expect("DIFFERENTIAL_CASES is a number"))
        .unwrap_or(2_000);
    let seed: u64 = std::env::var("DIFFERENTIAL_SEED")
        .map(|v| v.parse().expect("DIFFERENTIAL_SEED is a number"))
        .unwrap_or(17);
    let mut rng = Rng(seed);
    let cases: Vec<Case> = (0..count).map(|_| generate(&mut rng)).collect();
    let per_case_requests: Vec<Vec<Request>> = cases.iter().map(requests).collect();

    // Two Node processes at a time, each deciding one batch.
    const BATCH: usize = 500;
    let mut answers: Vec<Vec<String>> = Vec::with_capacity(count);
    for (cases, requests) in cases
        .chunks(BATCH * 2)
        .zip(per_case_requests.chunks(BATCH * 2))
    {
        let halves: Vec<_> = cases.chunks(BATCH).zip(requests.chunks(BATCH)).collect();
        let decided: Vec<Vec<Vec<String>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = halves
                .iter()
                .map(|(c, r)| scope.spawn(move || oracle(c, r)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        answers.extend(decided.into_iter().flatten());
    }

    let mut compared = 0usize;
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut by_decision: BTreeMap<&str, usize> = BTreeMap::new();
    let mut unexplained = Vec::new();
    for ((case, requests), oracle) in cases.iter().zip(&per_case_requests).zip(&answers) {
        let key_policy = parse(&case.key_policy, DocumentKind::KeyPolicy);
        let identity: Vec<policy::Policy> = case
            .identity_policies
            .iter()
            .map(|p| parse(p, DocumentKind::IdentityPolicy))
            .collect();
        assert_eq!(requests.len(), oracle.len());
        for (request, theirs) in requests.iter().zip(oracle) {
            compared += 1;
            let ours = eval::decide(&key_policy, Some(&identity), request);
            *by_decision.entry(name(&ours)).or_default() += 1;
            if name(&ours) == theirs {
                *outcomes.entry("agree".into()).or_default() += 1;
                continue;
            }
            let deviation = explain(&key_policy, &identity, request, theirs);
            match deviation {
                Some(kind) => *outcomes.entry(kind.into()).or_default() += 1,
                None => {
                    *outcomes.entry("UNEXPLAINED".into()).or_default() += 1;
                    if unexplained.len() < 5 {
                        unexplained.push(format!(
                            "ours {} / oracle {theirs} for {} {} (mutations: {:?})\ncontext: {:?}\nkey policy: {}\nidentity policies: {}",
                            name(&ours),
                            oracle_principal(&request.caller),
                            request.action,
                            case.mutations,
                            request.context,
                            serde_json::to_string(&case.key_policy).unwrap(),
                            serde_json::to_string(&case.identity_policies).unwrap(),
                        ));
                    }
                }
            }
        }
    }
    println!(
        "differential: {count} cases (seed {seed}), {compared} requests compared; our decisions {by_decision:?}; outcomes {outcomes:?}"
    );
    for deviation in &DEVIATIONS {
        println!(
            "  known deviation {}: {} ({})",
            deviation.kind, deviation.what, deviation.documentation
        );
    }
    assert!(
        unexplained.is_empty(),
        "{} disagreements outside the known deviations; the first:\n{}",
        outcomes.get("UNEXPLAINED").copied().unwrap_or_default(),
        unexplained.join("\n\n")
    );
    // The generator reaches every kind of decision (a test that cannot fail checks nothing).
    for decision in ["Allowed", "ExplicitlyDenied", "ImplicitlyDenied"] {
        assert!(
            by_decision.get(decision).copied().unwrap_or_default() * 50 > compared,
            "fewer than 2% of the decisions are {decision}: {by_decision:?}"
        );
    }
}
