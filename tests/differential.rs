//! The differential test: random key and identity policies, each a few mutations of the
//! policies a profile needs, decided for every request of the profile by the verifier's
//! evaluator and by an independent IAM simulator (the npm package
//! `@cloud-copilot/iam-simulate`, driven by tests/oracle/simulate.mjs, one Node process per
//! batch). Every decision must agree, except where the simulator deviates from what the AWS
//! documentation says: those deviations are listed in `DEVIATIONS`, each recognised by
//! re-deciding the request the simulator's way, and counted.
//!
//! A second test checks the access summary (`verify::access`) against the same simulator
//! (its comment below says how).
//!
//! `DIFFERENTIAL_CASES` (default 2,000) sets the number of cases,
//! `DIFFERENTIAL_ACCESS_CASES` (default 200) those of the access summary's test, and
//! `DIFFERENTIAL_SEED` the seed of both; the long runs and their figures are in
//! RELIABILITY.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    collections::BTreeMap,
    io::Write as _,
    process::{Command, Stdio},
};

use inspector_keyd::verify::{
    Profile, access,
    condition::{Operator, SetQualifier},
    eval::{self, Caller, Decision, Request},
    policy::{self, Document, DocumentKind, PrincipalElement},
    profile::{self, Params},
    render, variables, wildcard,
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
    let batch = json!({"cases": cases.iter().zip(per_case_requests).map(|(case, requests)| json!({
        "key_policy": case.key_policy,
        "identity_policies": case.identity_policies,
        "resource_account": ACCOUNT,
        "requests": requests.iter().map(oracle_request).collect::<Vec<_>>(),
    })).collect::<Vec<_>>()});
    run_oracle(&batch)
}

/// Runs tests/oracle/simulate.mjs on one batch (its header describes the JSON).
fn run_oracle(batch: &Value) -> Vec<Vec<String>> {
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
    let mut child = Command::new(node)
        .arg(script)
        .env("ORACLE_PACKAGE", module.parent().unwrap())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = serde_json::to_vec(batch).unwrap();
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

// The access summary (verify::access) against the same simulator. Key policies are the
// profile cases above with statements that reach outside the account added (other
// accounts, "*" under conditions, service principals, denies that pin the caller), then
// mutated; requests are sampled from the values the policies themselves name, plus an
// account and an organization that no policy names (so that access from them is public).
// Three checks, each counted:
//   - every witness of the summary is allowed by the simulator (unsound otherwise), and
//     comes from outside when its entry is external (from inside when not), from an
//     account no policy names when it is public;
//   - every sampled request the simulator allows is covered by an entry of the summary
//     (`entry.covers` and the action listed), by an external one when it comes from
//     outside and by a public one when it comes from the unnamed account (missed
//     otherwise), unless a statement the summary reports incomplete applies to it;
//   - `diff` of the key policy against a mutation of it: a sampled request the new policy
//     lets further than the old (see `Identity`: allowed where it was denied, or allowed
//     outright where it needed the caller's identity policies) is covered by a
//     `new_access` entry, one the old lets further by a `removed_access` entry, and each
//     entry's witness is let further by the one than by the other.
// A request the evaluator and the simulator decide differently is left out of the checks
// when one of the simulator's known deviations explains it (counted), and fails the test
// when none does. `DIFFERENTIAL_ACCESS_CASES` (default 200) sets the number of cases;
// `DIFFERENTIAL_SEED` the seed, as above.

/// An account the generated key policies give access to.
const PARTNER_ACCOUNT: &str = "444455556666";
/// An account no generated policy names: access from it is public.
const UNNAMED_ACCOUNT: &str = "999988887777";
/// The organization the generated key policies name.
const ORG: &str = "o-a1b2c3d4e5";
/// An organization no generated policy names.
const UNNAMED_ORG: &str = "o-zz9999zz99";

/// What the generated access statements allow.
const ACCESS_ACTIONS: [&str; 12] = [
    "kms:*",
    "kms:Decrypt",
    "kms:GenerateDataKey*",
    "kms:CreateGrant",
    "kms:*Grant",
    "kms:DisableKey",
    "kms:PutKeyPolicy",
    "kms:ScheduleKeyDeletion",
    "kms:ReEncrypt*",
    "kms:Describe*",
    "kms:GenerateDataKeyPair*",
    "kms:Encrypt",
];

/// The actions the summary is about.
fn summary_actions() -> Vec<&'static str> {
    access::READS_CODE
        .iter()
        .chain(&access::BREAKS_SCANNING)
        .copied()
        .collect()
}

/// A statement giving (or, one time in four, denying) access beyond the profile's.
fn access_statement(rng: &mut Rng) -> Value {
    let sid = format!("Access{}", rng.next() % 1000);
    let actions = rng.some(&ACCESS_ACTIONS, 3);
    if rng.chance(25) {
        let (op, key, value) = *rng.pick(&[
            ("StringNotEquals", "aws:PrincipalAccount", ACCOUNT),
            ("StringNotEqualsIfExists", "aws:SourceAccount", ACCOUNT),
            ("StringNotEquals", "aws:PrincipalOrgID", ORG),
            ("Bool", "aws:SecureTransport", "false"),
            ("NotIpAddress", "aws:SourceIp", "203.0.113.0/24"),
            ("StringNotEquals", "kms:CallerAccount", ACCOUNT),
        ]);
        let mut statement = json!({"Sid": sid, "Effect": "Deny", "Principal": "*",
                                   "Action": actions, "Resource": "*"});
        add_condition(&mut statement, op, key, value);
        return statement;
    }
    let partner_root = format!("arn:aws:iam::{PARTNER_ACCOUNT}:root");
    let partner_role = format!("arn:aws:iam::{PARTNER_ACCOUNT}:role/Partner");
    let pinned = *rng.pick(&[ACCOUNT, PARTNER_ACCOUNT]);
    let (principal, conditions): (Value, Vec<(&str, &str, String)>) = match rng.below(16) {
        0 => (json!({"AWS": partner_root}), vec![]),
        1 => (json!({"AWS": PARTNER_ACCOUNT}), vec![]),
        2 => (json!({"AWS": partner_role}), vec![]),
        3 => (
            json!("*"),
            vec![("StringEquals", "aws:PrincipalOrgID", ORG.into())],
        ),
        4 => (
            json!({"AWS": "*"}),
            vec![
                ("StringEquals", "kms:CallerAccount", pinned.into()),
                (
                    "StringEquals",
                    "kms:ViaService",
                    "ec2.us-east-1.amazonaws.com".into(),
                ),
            ],
        ),
        5 => (
            json!("*"),
            vec![("IpAddress", "aws:SourceIp", "203.0.113.0/24".into())],
        ),
        6 => (
            json!("*"),
            vec![(
                "ArnLike",
                "aws:PrincipalArn",
                "arn:aws:iam::*:role/Admin".into(),
            )],
        ),
        7 => (
            json!({"Service": "q.amazonaws.com"}),
            vec![("StringEquals", "aws:SourceAccount", pinned.into())],
        ),
        8 => (json!({"Service": "q.amazonaws.com"}), vec![]),
        9 => (
            json!("*"),
            vec![("StringEquals", "aws:PrincipalAccount", pinned.into())],
        ),
        10 => (json!("*"), vec![]),
        11 => (
            json!("*"),
            vec![("StringLike", "kms:ViaService", "*".into())],
        ),
        12 => (
            json!({"Service": "codeguru-security.amazonaws.com"}),
            vec![(
                "ArnLike",
                "aws:SourceArn",
                format!("arn:aws:codeguru-security:*:{ACCOUNT}:*"),
            )],
        ),
        13 => (
            json!("*"),
            vec![(
                "StringEqualsIgnoreCase",
                "aws:PrincipalArn",
                // A role no principal element names: IAM names are not distinguished by
                // case, and the simulator matches a principal element's ARN ignoring case
                // where the evaluator does not, so a policy naming both `role/Partner` and,
                // through this condition, `role/PARTNER` would ask about a role that cannot
                // exist beside the named one.
                format!("arn:aws:iam::{PARTNER_ACCOUNT}:role/auditor"),
            )],
        ),
        14 => (
            json!({"AWS": [partner_role, ROLE]}),
            vec![("StringLike", "kms:ViaService", "inspector2.*".into())],
        ),
        _ => (Value::Null, vec![]),
    };
    let mut statement = json!({"Sid": sid, "Effect": "Allow", "Action": actions, "Resource": "*"});
    if principal.is_null() {
        statement["NotPrincipal"] = json!({"AWS": [partner_root, ACCOUNT]});
    } else {
        statement["Principal"] = principal;
    }
    for (op, key, value) in conditions {
        add_condition(&mut statement, op, key, &value);
    }
    if rng.chance(25) {
        let (op, key, value) = *rng.pick(&CONDITIONS);
        add_condition(&mut statement, op, key, value);
    }
    statement
}

/// A profile case with one to three access statements added, then mutated.
fn access_case(rng: &mut Rng) -> Case {
    let mut case = base_case(rng);
    for _ in 0..1 + rng.below(3) {
        let statement = access_statement(rng);
        let list = statements(&mut case.key_policy);
        let at = rng.below(list.len() + 1);
        list.insert(at, statement);
        case.mutations.push("access statement".into());
    }
    for _ in 0..rng.below(3) {
        let mutation = mutate(rng, &mut case);
        case.mutations.push(mutation);
    }
    case
}

/// The case's key policy changed once or twice: the new policy of a `diff`.
fn changed_key_policy(rng: &mut Rng, case: &Case) -> (Value, Vec<String>) {
    // Without identity policies, `mutate` changes the key policy.
    let mut scratch = Case {
        identity_policies: Vec::new(),
        mutations: Vec::new(),
        ..case.clone()
    };
    for _ in 0..1 + usize::from(rng.chance(30)) {
        let change = match rng.below(10) {
            0 => {
                let list = statements(&mut scratch.key_policy);
                list.reverse();
                if list.len() > 2 {
                    let i = rng.below(list.len() - 1);
                    list.swap(i, i + 1);
                }
                "reorder".into()
            }
            1 | 2 => {
                let statement = access_statement(rng);
                let list = statements(&mut scratch.key_policy);
                let at = rng.below(list.len() + 1);
                list.insert(at, statement);
                "access statement".into()
            }
            _ => mutate(rng, &mut scratch),
        };
        scratch.mutations.push(change);
    }
    (scratch.key_policy, scratch.mutations)
}

fn parse_named(document: &Value, kind: DocumentKind, name: &str) -> policy::Policy {
    let text = serde_json::to_string_pretty(document).unwrap();
    let (parsed, findings) = policy::analyze(Document {
        kind,
        name,
        text: &text,
    });
    parsed.unwrap_or_else(|| panic!("generated policy does not parse: {findings:?}\n{text}"))
}

/// The 12-digit account of an IAM ARN, a bare account id, or `None`.
fn account_of(principal: &str) -> Option<String> {
    let account = if principal.starts_with("arn:") {
        principal.split(':').nth(4)?
    } else {
        principal
    };
    (account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit())).then(|| account.to_owned())
}

/// What the policies name, the values sampled requests are made of.
#[derive(Default)]
struct Named {
    accounts: Vec<String>,
    /// IAM principals' ARNs (roles and users) that may call.
    principals: Vec<String>,
    services: Vec<String>,
    orgs: Vec<String>,
    /// Each condition key (lower-cased), as first written, with the values compared to it.
    values: BTreeMap<String, (String, Vec<String>)>,
}

fn push_new(list: &mut Vec<String>, value: String) {
    if !list.contains(&value) {
        list.push(value);
    }
}

/// Values a pattern or value stands for: its wildcards filled, and in other case. Never
/// the empty string: no KMS request carries one, and the simulator takes it for a value
/// where AWS documents a null data set (`ForAllValues:` on "a null data set, such as an
/// empty string" is true).
fn instances(value: &str) -> Vec<String> {
    if variables::has_variables(value) {
        return Vec::new();
    }
    let filled = |run: &str| value.replace('*', run).replace('?', "x");
    let mut out = Vec::new();
    for instance in [filled(""), filled("sampled"), value.to_ascii_uppercase()] {
        if !instance.is_empty() {
            push_new(&mut out, instance);
        }
    }
    out
}

/// IAM principals an `aws:PrincipalArn` value (or pattern) matches, in the accounts given.
fn principal_instances(pattern: &str, accounts: &[String]) -> Vec<String> {
    if variables::has_variables(pattern) {
        return Vec::new();
    }
    let parts: Vec<&str> = pattern.splitn(6, ':').collect();
    let [_, _, _, _, account, resource] = parts.as_slice() else {
        return Vec::new();
    };
    let resource = resource.replace('*', "sampled").replace('?', "x");
    let resource =
        if (resource.starts_with("role/") || resource.starts_with("user/")) && resource.len() > 5 {
            resource
        } else {
            "role/sampled".to_owned()
        };
    accounts
        .iter()
        .filter(|a| wildcard::glob(account, a, false))
        .map(|a| format!("arn:aws:iam::{a}:{resource}"))
        .collect()
}

fn named(policies: &[&policy::Policy], principal: &str) -> Named {
    let mut named = Named::default();
    for account in [ACCOUNT, PARTNER_ACCOUNT, UNNAMED_ACCOUNT] {
        push_new(&mut named.accounts, account.into());
    }
    for org in [ORG, UNNAMED_ORG] {
        push_new(&mut named.orgs, org.into());
    }
    for service in ["q.amazonaws.com", "ec2.amazonaws.com"] {
        push_new(&mut named.services, service.into());
    }
    let statements = || policies.iter().flat_map(|p| &p.statements);
    let mut arn_patterns = Vec::new();
    for statement in statements() {
        if let PrincipalElement::Principal(p) | PrincipalElement::NotPrincipal(p) =
            &statement.principal
        {
            for aws in &p.aws {
                if let Some(account) = account_of(aws) {
                    push_new(&mut named.accounts, account.clone());
                    if aws.contains(":role/") || aws.contains(":user/") {
                        push_new(&mut named.principals, aws.clone());
                    }
                }
            }
            for service in &p.services {
                push_new(&mut named.services, service.clone());
            }
        }
        for condition in &statement.conditions {
            let key = condition.key.to_ascii_lowercase();
            let entry = named
                .values
                .entry(key.clone())
                .or_insert_with(|| (condition.key.clone(), Vec::new()));
            for value in &condition.values {
                push_new(&mut entry.1, value.clone());
            }
            match key.as_str() {
                "aws:principalaccount"
                | "kms:calleraccount"
                | "aws:sourceaccount"
                | "aws:resourceaccount" => {
                    for value in &condition.values {
                        if let Some(account) = account_of(value) {
                            push_new(&mut named.accounts, account);
                        }
                    }
                }
                "aws:principalorgid" => {
                    for value in instances_of(&condition.values) {
                        push_new(&mut named.orgs, value);
                    }
                }
                "aws:principalarn" => arn_patterns.extend(condition.values.iter().cloned()),
                _ => {}
            }
        }
    }
    let accounts = named.accounts.clone();
    for account in &accounts {
        push_new(
            &mut named.principals,
            format!("arn:aws:iam::{account}:role/sampled"),
        );
    }
    for pattern in arn_patterns {
        for arn in principal_instances(&pattern, &accounts) {
            push_new(&mut named.principals, arn);
        }
    }
    for arn in [principal, ROLE, USER, OTHER_ROLE] {
        push_new(&mut named.principals, arn.into());
    }
    named
}

fn instances_of(values: &[String]) -> Vec<String> {
    values.iter().flat_map(|v| instances(v)).collect()
}

/// Keys a sampled request sets from its caller (or leaves out), never at random.
const CALLER_KEYS: [&str; 16] = [
    "aws:principalarn",
    "aws:principalaccount",
    "kms:calleraccount",
    "aws:principaltype",
    "aws:username",
    "aws:userid",
    "aws:principalservicename",
    "aws:principalisawsservice",
    "aws:principalorgid",
    "kms:viaservice",
    "aws:viaawsservice",
    "aws:sourceaccount",
    "aws:sourcearn",
    "aws:resourceaccount",
    "aws:sourceip",
    "aws:securetransport",
];

/// Whether the action takes an encryption context.
fn takes_encryption_context(action: &str) -> bool {
    action.starts_with("kms:GenerateDataKey")
        || action == "kms:Decrypt"
        || action == "kms:ReEncryptFrom"
}

fn set(context: &mut Vec<(String, Vec<String>)>, key: &str, value: &str) {
    context.push((key.to_owned(), vec![value.to_owned()]));
}

/// Some of a key's values as the policies name them, or one they do not.
fn sample_values(rng: &mut Rng, key: &str, written: &[String]) -> Vec<String> {
    let mut pool = instances_of(written);
    pool.push("sampled-value".into());
    if policy::is_multi_valued(key) {
        rng.some(&pool, 2)
    } else {
        vec![rng.pick(&pool).clone()]
    }
}

/// A request for the key, its caller and context made of what the policies name: the
/// keys the caller determines set consistently with it, every other key the policies
/// compare present with one of their values (or one they do not name) or absent, except
/// where the documentation settles the request lacks it (`profile::documented_absent`).
fn sample_request(rng: &mut Rng, named: &Named, principal: &str) -> Request {
    let action = (*rng.pick(&summary_actions())).to_owned();
    let mut context = Vec::new();
    let written = |key: &str| {
        named
            .values
            .get(key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let caller = if rng.chance(30) {
        let service = rng.pick(&named.services).clone();
        set(&mut context, "aws:PrincipalServiceName", &service);
        set(&mut context, "aws:PrincipalIsAWSService", "true");
        if rng.chance(85) {
            let account = rng.pick(&named.accounts).clone();
            set(&mut context, "aws:SourceAccount", &account);
            if rng.chance(70) {
                // AWS sets both: the source ARN's account is the source account.
                let mut arns: Vec<String> = instances_of(&written("aws:sourcearn"))
                    .iter()
                    .filter_map(|arn| {
                        let mut parts: Vec<&str> = arn.splitn(6, ':').collect();
                        (parts.len() == 6).then(|| {
                            parts[4] = &account;
                            parts.join(":")
                        })
                    })
                    .collect();
                arns.push(format!(
                    "arn:aws:qdeveloper:{REGION}:{account}:scans/sampled"
                ));
                let arn = rng.pick(&arns).clone();
                set(&mut context, "aws:SourceArn", &arn);
            }
        }
        Caller::Service(service)
    } else {
        let arn = if rng.chance(35) {
            principal.to_owned()
        } else {
            rng.pick(&named.principals).clone()
        };
        let account = account_of(&arn).unwrap();
        set(&mut context, "aws:PrincipalArn", &arn);
        set(&mut context, "aws:PrincipalAccount", &account);
        set(&mut context, "kms:CallerAccount", &account);
        match arn.split_once(":user/") {
            Some((_, name)) => {
                set(&mut context, "aws:PrincipalType", "User");
                set(&mut context, "aws:username", name);
            }
            None => set(&mut context, "aws:PrincipalType", "AssumedRole"),
        }
        set(&mut context, "aws:PrincipalIsAWSService", "false");
        if rng.chance(60) {
            let mut via = instances_of(&written("kms:viaservice"));
            via.extend(
                [
                    "inspector2.us-east-1.amazonaws.com",
                    "ec2.us-east-1.amazonaws.com",
                    "codeguru-security.us-east-1.amazonaws.com",
                ]
                .map(String::from),
            );
            let via = rng.pick(&via).clone();
            set(&mut context, "aws:ViaAWSService", "true");
            set(&mut context, "kms:ViaService", &via);
        } else {
            set(&mut context, "aws:ViaAWSService", "false");
        }
        if rng.chance(50) {
            let org = rng.pick(&named.orgs).clone();
            set(&mut context, "aws:PrincipalOrgID", &org);
        }
        if rng.chance(50) {
            let mut addresses: Vec<String> = written("aws:sourceip")
                .iter()
                .map(|cidr| cidr.split('/').next().unwrap_or_default().to_owned())
                .collect();
            addresses.push("198.51.100.7".into());
            let address = rng.pick(&addresses).clone();
            set(&mut context, "aws:SourceIp", &address);
        }
        Caller::Aws { arn, account }
    };
    let transport = if rng.chance(90) { "true" } else { "false" };
    set(&mut context, "aws:SecureTransport", transport);
    let region = if rng.chance(80) { REGION } else { "eu-west-1" };
    set(&mut context, "aws:RequestedRegion", region);
    set(&mut context, "aws:ResourceAccount", ACCOUNT);
    // The encryption context, on the operations that take one: some of the keys the
    // policies name.
    if takes_encryption_context(&action) && rng.chance(60) {
        let mut keys = Vec::new();
        for (lower, (key, values)) in &named.values {
            if lower.starts_with("kms:encryptioncontext:") && rng.chance(60) {
                let value = sample_values(rng, key, values).remove(0);
                set(&mut context, key, &value);
                keys.push(key["kms:EncryptionContext:".len()..].to_owned());
            }
        }
        if keys.is_empty() {
            keys.push("purpose".into());
            set(
                &mut context,
                "kms:EncryptionContext:purpose",
                "sampled-value",
            );
        }
        context.push(("kms:EncryptionContextKeys".into(), keys));
    }
    let mut request = Request {
        caller,
        action,
        resource: KEY_ARN.to_owned(),
        context,
    };
    for (lower, (key, values)) in &named.values {
        if CALLER_KEYS.contains(&lower.as_str())
            || lower.starts_with("kms:encryptioncontext")
            || request.context_value(key).is_some()
            || profile::documented_absent(&request, key)
            || !rng.chance(50)
        {
            continue;
        }
        let sampled = sample_values(rng, key, values);
        request.context.push((key.clone(), sampled));
    }
    request
}

/// A service principal no generated policy names, in the form AWS gives service principals.
const UNNAMED_SERVICE: &str = "unnamed.amazonaws.com";

/// The request as the simulator is asked it (and the evaluator, to compare): the keys the
/// evaluator derives from the caller written out, and a service principal the simulator
/// would not recognise as one (the summary's stand-in for the services no policy names,
/// which is not of the form `<name>.amazonaws.com`) given as another service no policy
/// names.
fn explicit(request: &Request) -> Request {
    let mut request = request.clone();
    if let Caller::Service(service) = &request.caller
        && !service.ends_with(".amazonaws.com")
    {
        request.caller = Caller::Service(UNNAMED_SERVICE.to_owned());
    }
    if let Caller::Aws { arn, account } = request.caller.clone() {
        for (key, value) in [
            ("aws:PrincipalArn", arn),
            ("aws:PrincipalAccount", account.clone()),
            ("kms:CallerAccount", account),
        ] {
            if !request
                .context
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case(key))
            {
                request.context.push((key.to_owned(), vec![value]));
            }
        }
    }
    request
}

/// The account a request comes from: its caller's, or the one a service acts for.
/// A service acts for its `aws:SourceAccount`, or the account of its `aws:SourceArn`.
fn request_account(request: &Request) -> Option<&str> {
    match &request.caller {
        Caller::Aws { account, .. } => Some(account),
        Caller::Service(_) => match request.context_value("aws:SourceAccount") {
            Some([one]) => Some(one),
            _ => request
                .context_value("aws:SourceArn")
                .and_then(|v| v.first())
                .and_then(|arn| arn.split(':').nth(4))
                .filter(|a| account_of(a).is_some()),
        },
    }
}

/// Whom the key's account trusts in a case.
#[derive(Clone, Copy)]
struct Trusting {
    partner: bool,
    org: bool,
}

fn trusted_accounts(trusting: Trusting) -> &'static [String] {
    static PARTNER: std::sync::LazyLock<[String; 1]> =
        std::sync::LazyLock::new(|| [PARTNER_ACCOUNT.to_owned()]);
    if trusting.partner { &*PARTNER } else { &[] }
}

fn trust(trusting: Trusting) -> access::Trust<'static> {
    access::Trust {
        trusted_accounts: trusted_accounts(trusting),
        organization_id: trusting.org.then_some(ORG),
        deny_external_access: false,
    }
}

/// Whether a request comes from inside: the key's account, a trusted account, or a
/// principal of the trusted organization.
fn from_inside(request: &Request, trust: &access::Trust<'_>) -> bool {
    let account = request_account(request);
    account.is_some_and(|a| a == ACCOUNT || trust.trusted_accounts.iter().any(|t| t == a))
        || (matches!(request.caller, Caller::Aws { .. })
            && trust.organization_id.is_some_and(|org| {
                request
                    .context_value("aws:PrincipalOrgID")
                    .is_some_and(|v| v.iter().any(|o| o == org))
            }))
}

/// The accounts and organizations some policies (or the trust) name.
#[derive(Clone, Default)]
struct Naming {
    /// Every 12-digit number the policies' text holds, and the trusted accounts.
    accounts: Vec<String>,
    /// The values `aws:PrincipalOrgID` is compared with (wildcards aside), and the trusted
    /// organization.
    orgs: Vec<String>,
}

impl Naming {
    fn add(&mut self, document: &Value, parsed: &policy::Policy) {
        for account in accounts_in(document) {
            push_new(&mut self.accounts, account);
        }
        for condition in parsed.statements.iter().flat_map(|s| &s.conditions) {
            if condition.key.eq_ignore_ascii_case("aws:PrincipalOrgID") {
                for value in &condition.values {
                    if !value.contains(['*', '?']) {
                        push_new(&mut self.orgs, value.clone());
                    }
                }
            }
        }
    }

    fn trusting(&mut self, trust: &access::Trust<'_>) {
        for account in trust.trusted_accounts {
            push_new(&mut self.accounts, account.clone());
        }
        if let Some(org) = trust.organization_id {
            push_new(&mut self.orgs, org.to_owned());
        }
    }
}

/// Whether a request comes from an account, and organization, no policy names.
fn from_unnamed(request: &Request, naming: &Naming) -> bool {
    let org_unnamed = match &request.caller {
        Caller::Aws { .. } => request
            .context_value("aws:PrincipalOrgID")
            .is_none_or(|v| v.iter().all(|o| !naming.orgs.contains(o))),
        Caller::Service(_) => true,
    };
    request_account(request).is_some_and(|a| !naming.accounts.iter().any(|n| n == a)) && org_unnamed
}

/// The 12-digit numbers a policy's text holds: the accounts it names.
fn accounts_in(document: &Value) -> Vec<String> {
    let text = document.to_string();
    let mut accounts = Vec::new();
    for run in text.split(|c: char| !c.is_ascii_digit()) {
        if run.len() == 12 {
            push_new(&mut accounts, run.to_owned());
        }
    }
    accounts
}

/// Whether some statement the analysis reports incomplete applies to the request (its
/// principal element takes in the caller, its action and resource cover the request), or
/// the analysis names no statement of `policies`.
fn left_incomplete(
    incomplete: &[access::Incomplete],
    policies: &[&policy::Policy],
    request: &Request,
) -> bool {
    incomplete.iter().any(|gap| {
        let mut found = policies
            .iter()
            .flat_map(|p| &p.statements)
            .filter(|s| s.location == gap.location)
            .peekable();
        found.peek().is_none()
            || found.any(|s| {
                eval::applies_to(s, &request.caller) && eval::covers_action_and_resource(s, request)
            })
    })
}

fn lists_action(entry: &access::AccessEntry, action: &str) -> bool {
    entry.actions.iter().any(|a| a.eq_ignore_ascii_case(action))
}

/// One generated access case, with what the library said about it.
struct AccessCase {
    case: Case,
    new_key_policy: Value,
    changes: Vec<String>,
    trusting: Trusting,
    sampled: Vec<Request>,
}

/// Who decides a caller's requests besides the key policy. The summary knows the
/// configured principal's identity policies (when the case has some) and nobody else's: a
/// key policy that delegates to an account, or names a principal of another account,
/// leaves those callers' requests to identity policies it cannot see, and the summary
/// counts them as access "through the account's identity policies" (the evaluator's
/// `IdentityPolicyNotChecked`). The simulator needs an identity policy to allow such a
/// request, so every IAM caller but the configured principal is given one allowing `kms:*`:
/// the simulator then allows exactly the requests some identity policy could let through,
/// the ones the summary must account for. (Sampling the configured principal alone would
/// leave out the callers external and public access are about.)
///
/// A diff also tells access that needs the caller's identity policies from access that
/// does not: a key policy that names a role where the old one delegated to its account lets
/// the role in whatever its identity policies say, which is new access (for a role whose
/// identity policies do not allow it, the new policy allows and the old does not). So the
/// diff's requests are decided twice, those callers given the `kms:*` policy and given none:
/// a request is allowed outright when the simulator allows it without, through identity
/// policies when only with, and the diff is about the requests one policy lets further
/// than the other (for some identity policies the caller may have, one policy allows and
/// the other does not).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Identity {
    /// The configured principal, with its identity policies.
    Configured,
    /// Any other IAM principal (or the configured one when its policies are not known).
    AllowsKms,
    /// A service principal: no identity policy applies.
    Service,
}

fn identity_of(request: &Request, case: &Case) -> Identity {
    match &request.caller {
        Caller::Service(_) => Identity::Service,
        Caller::Aws { arn, .. } if arn == case.principal && !case.identity_policies.is_empty() => {
            Identity::Configured
        }
        Caller::Aws { .. } => Identity::AllowsKms,
    }
}

fn allows_kms() -> Value {
    json!({"Version": "2012-10-17", "Statement": [
        {"Sid": "AnyIdentityPolicy", "Effect": "Allow", "Action": "kms:*", "Resource": "*"}
    ]})
}

/// The simulator's case for `requests` on `key_policy`; `open`: the callers whose identity
/// policies are not known have one allowing `kms:*` (else none).
fn access_oracle_case(key_policy: &Value, case: &Case, open: bool, requests: &[Request]) -> Value {
    let other: Vec<Value> = if open { vec![allows_kms()] } else { Vec::new() };
    json!({
        "key_policy": key_policy,
        "identity_policies": case.identity_policies,
        "other_identity_policies": other,
        "resource_account": ACCOUNT,
        "requests": requests.iter().map(|r| {
            let mut request = oracle_request(&explicit(r));
            request["identity"] = match identity_of(r, case) {
                Identity::Configured => json!(true),
                Identity::AllowsKms => json!("other"),
                Identity::Service => json!(false),
            };
            request
        }).collect::<Vec<_>>(),
    })
}

/// The counts of the access checks.
#[derive(Default, Debug)]
struct AccessCounts {
    entries: usize,
    external_entries: usize,
    public_entries: usize,
    incomplete: usize,
    witnesses: usize,
    witnesses_allowed: usize,
    sampled: usize,
    sampled_allowed: usize,
    covered: usize,
    covered_outside: usize,
    covered_unnamed: usize,
    left_incomplete: usize,
    reorders: usize,
    new_access: usize,
    removed_access: usize,
    diff_witnesses: usize,
    diff_witnesses_confirmed: usize,
    sampled_new: usize,
    sampled_new_covered: usize,
    sampled_removed: usize,
    sampled_removed_covered: usize,
    diff_left_incomplete: usize,
}

/// Failures of one kind, the first few described.
#[derive(Default)]
struct Failures {
    counts: BTreeMap<&'static str, usize>,
    /// The first two of each kind in full.
    first: Vec<String>,
    /// The first line of each (the first hundred).
    lines: Vec<String>,
}

impl Failures {
    fn add(&mut self, kind: &'static str, describe: impl FnOnce() -> String) {
        let seen = self.counts.entry(kind).or_default();
        *seen += 1;
        let described = format!("{kind}: {}", describe());
        if self.lines.len() < 100 {
            let line = described.lines().next().unwrap_or_default();
            self.lines.push(line.chars().take(400).collect());
        }
        if *seen <= 2 {
            self.first.push(described);
        }
    }
}

fn describe_request(request: &Request) -> String {
    format!(
        "{} calls {} with {:?}",
        oracle_principal(&request.caller),
        request.action,
        request.context
    )
}

/// How far a policy lets a request through, from the simulator's two answers (`None`
/// where a known deviation of the simulator leaves the answer out): 2 outright, 1 through
/// identity policies that are not known, 0 not at all.
fn rank(identity: Identity, open: Option<bool>, closed: Option<bool>) -> Option<u8> {
    match identity {
        Identity::AllowsKms => match (closed?, open?) {
            (true, _) => Some(2),
            (false, true) => Some(1),
            (false, false) => Some(0),
        },
        Identity::Configured | Identity::Service => open.map(|a| if a { 2 } else { 0 }),
    }
}

#[test]
fn the_access_summary_agrees_with_an_independent_iam_simulator() {
    let count: usize = std::env::var("DIFFERENTIAL_ACCESS_CASES")
        .map(|v| v.parse().expect("DIFFERENTIAL_ACCESS_CASES is a number"))
        .unwrap_or(200);
    let seed: u64 = std::env::var("DIFFERENTIAL_SEED")
        .map(|v| v.parse().expect("DIFFERENTIAL_SEED is a number"))
        .unwrap_or(17);
    // Its own sequence, so the evaluator's test above keeps its cases.
    let mut rng = Rng(seed ^ 0xACCE_55ED);
    const SAMPLED: usize = 24;
    let started = std::time::Instant::now();

    let mut cases = Vec::with_capacity(count);
    for _ in 0..count {
        let case = access_case(&mut rng);
        let (new_key_policy, changes) = changed_key_policy(&mut rng, &case);
        let trusting = Trusting {
            partner: rng.chance(30),
            org: rng.chance(30),
        };
        cases.push(AccessCase {
            case,
            new_key_policy,
            changes,
            trusting,
            sampled: Vec::new(),
        });
    }

    // The summaries and diffs, and the requests to put to the simulator: the sampled
    // requests and the diff's witnesses on both policies, each with and without the
    // `kms:*` identity policy, and the summary's witnesses on the old policy with it.
    struct Analysed {
        old: policy::Policy,
        new: policy::Policy,
        identity: Vec<policy::Policy>,
        summary: access::AccessSummary,
        diff: access::AccessDiff,
        /// The sampled requests and the diff's witnesses.
        both: Vec<Request>,
        /// The summary's witnesses.
        witnesses: Vec<Request>,
        /// The accounts the old policy and the identity policies name (the summary's), and
        /// those the new one names as well (the diff's).
        named: Naming,
        named_in_diff: Naming,
    }
    let mut analysed = Vec::with_capacity(count);
    let (mut summarizing, mut diffing) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
    for access_case in &mut cases {
        let case = &access_case.case;
        let old = parse_named(&case.key_policy, DocumentKind::KeyPolicy, "key_policy");
        let new = parse_named(
            &access_case.new_key_policy,
            DocumentKind::KeyPolicy,
            "new_key_policy",
        );
        let identity: Vec<policy::Policy> = case
            .identity_policies
            .iter()
            .enumerate()
            .map(|(i, p)| {
                parse_named(
                    p,
                    DocumentKind::IdentityPolicy,
                    &format!("identity_policies[{i}]"),
                )
            })
            .collect();
        let trust = trust(access_case.trusting);
        let subject = access::Subject {
            account_id: ACCOUNT,
            key_arn: KEY_ARN,
            principal_arn: Some(case.principal),
            identity_policies: (!identity.is_empty()).then_some(identity.as_slice()),
            boundary: None,
            trust,
        };
        let timer = std::time::Instant::now();
        let summary = access::summarize(&old, &subject);
        summarizing += timer.elapsed();
        let timer = std::time::Instant::now();
        let diff = access::diff(&old, &new, &subject);
        diffing += timer.elapsed();
        let mut policies = vec![&old, &new];
        policies.extend(&identity);
        let pools = named(&policies, case.principal);
        access_case.sampled = (0..SAMPLED)
            .map(|_| sample_request(&mut rng, &pools, case.principal))
            .collect();
        let both: Vec<Request> = access_case
            .sampled
            .iter()
            .cloned()
            .chain(
                diff.new_access
                    .iter()
                    .chain(&diff.removed_access)
                    .map(|e| e.witness.request.clone()),
            )
            .collect();
        let witnesses = summary
            .entries
            .iter()
            .map(|e| e.witness.request.clone())
            .collect();
        let mut named = Naming::default();
        named.add(&case.key_policy, &old);
        for (document, parsed) in case.identity_policies.iter().zip(&identity) {
            named.add(document, parsed);
        }
        named.trusting(&trust);
        let mut named_in_diff = named.clone();
        named_in_diff.add(&access_case.new_key_policy, &new);
        analysed.push(Analysed {
            old,
            new,
            identity,
            summary,
            diff,
            both,
            witnesses,
            named,
            named_in_diff,
        });
    }

    // The simulator, two Node processes at a time; five of its cases per access case.
    const BATCH: usize = 200;
    let mut answers: Vec<Vec<Vec<String>>> = Vec::with_capacity(count);
    let indexes: Vec<usize> = (0..count).collect();
    for pair in indexes.chunks(BATCH * 2) {
        let decided: Vec<Vec<Vec<String>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = pair
                .chunks(BATCH)
                .map(|chunk| {
                    let batch = json!({"cases": chunk.iter().flat_map(|&i| {
                        let (c, a) = (&cases[i], &analysed[i]);
                        let (old, new) = (&c.case.key_policy, &c.new_key_policy);
                        [
                            access_oracle_case(old, &c.case, true, &a.witnesses),
                            access_oracle_case(old, &c.case, true, &a.both),
                            access_oracle_case(old, &c.case, false, &a.both),
                            access_oracle_case(new, &c.case, true, &a.both),
                            access_oracle_case(new, &c.case, false, &a.both),
                        ]
                    }).collect::<Vec<_>>()});
                    scope.spawn(move || run_oracle(&batch))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let decided: Vec<Vec<String>> = decided.into_iter().flatten().collect();
        answers.extend(decided.chunks(5).map(<[Vec<String>]>::to_vec));
    }
    assert_eq!(answers.len(), count);

    let mut counts = AccessCounts::default();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Failures::default();
    let allows_kms = [parse_named(
        &allows_kms(),
        DocumentKind::IdentityPolicy,
        "other_identity_policies[0]",
    )];
    for ((access_case, a), theirs) in cases.iter().zip(&analysed).zip(&answers) {
        let case = &access_case.case;
        let trust = trust(access_case.trusting);
        let about = || {
            format!(
                "(mutations {:?}, then {:?}; trust {:?})\nkey policy: {}\nnew key policy: {}\nidentity policies: {}",
                case.mutations,
                access_case.changes,
                (access_case.trusting.partner, access_case.trusting.org),
                serde_json::to_string(&case.key_policy).unwrap(),
                serde_json::to_string(&access_case.new_key_policy).unwrap(),
                serde_json::to_string(&case.identity_policies).unwrap(),
            )
        };
        // The simulator's answers (allowed or not) where it and the evaluator agree, or
        // `None` where a known deviation explains the difference.
        let mut settle =
            |key_policy: &policy::Policy, open: bool, requests: &[Request], theirs: &[String]| {
                assert_eq!(requests.len(), theirs.len());
                requests
                    .iter()
                    .zip(theirs)
                    .map(|(request, theirs)| {
                        let request = explicit(request);
                        let identity: &[policy::Policy] = match identity_of(&request, case) {
                            Identity::Configured => &a.identity,
                            Identity::AllowsKms if open => &allows_kms,
                            Identity::AllowsKms | Identity::Service => &[],
                        };
                        let ours = eval::decide(key_policy, Some(identity), &request);
                        if name(&ours) == theirs {
                            *outcomes.entry("agree".into()).or_default() += 1;
                            return Some(theirs == "Allowed");
                        }
                        match explain(key_policy, identity, &request, theirs) {
                            Some(kind) => *outcomes.entry(kind.into()).or_default() += 1,
                            None => {
                                *outcomes.entry("UNEXPLAINED".into()).or_default() += 1;
                                failures.add("evaluator disagrees with the simulator", || {
                                    format!(
                                        "ours {} / simulator {theirs} for {} {}",
                                        name(&ours),
                                        describe_request(&request),
                                        about()
                                    )
                                });
                            }
                        }
                        None
                    })
                    .collect::<Vec<Option<bool>>>()
            };
        let witness_allowed = settle(&a.old, true, &a.witnesses, &theirs[0]);
        let old_open = settle(&a.old, true, &a.both, &theirs[1]);
        let old_closed = settle(&a.old, false, &a.both, &theirs[2]);
        let new_open = settle(&a.new, true, &a.both, &theirs[3]);
        let new_closed = settle(&a.new, false, &a.both, &theirs[4]);
        let ranks = |i: usize| {
            let identity = identity_of(&a.both[i], case);
            (
                rank(identity, old_open[i], old_closed[i]),
                rank(identity, new_open[i], new_closed[i]),
            )
        };
        let summary = &a.summary;
        counts.entries += summary.entries.len();
        counts.external_entries += summary.entries.iter().filter(|e| e.external).count();
        counts.public_entries += summary.entries.iter().filter(|e| e.public).count();
        counts.incomplete += summary.incomplete.len();

        // Every witness is allowed, and is what its entry's flags claim.
        for (entry, allowed) in summary.entries.iter().zip(&witness_allowed) {
            counts.witnesses += 1;
            let witness = &entry.witness.request;
            match allowed {
                Some(true) => counts.witnesses_allowed += 1,
                Some(false) => failures.add("unsound witness", || {
                    format!("{} for {entry:#?} {}", describe_request(witness), about())
                }),
                None => {}
            }
            check_flags(entry, &trust, &a.named, &mut failures, &about);
        }

        // Every sampled request the simulator allows is covered, with the right flags.
        for (i, request) in access_case.sampled.iter().enumerate() {
            counts.sampled += 1;
            if old_open[i] != Some(true) {
                continue;
            }
            counts.sampled_allowed += 1;
            let covering: Vec<&access::AccessEntry> = summary
                .entries
                .iter()
                .filter(|e| lists_action(e, &request.action) && e.covers(&a.old, request))
                .collect();
            if covering.is_empty() {
                if left_incomplete(&summary.incomplete, &[&a.old], request) {
                    counts.left_incomplete += 1;
                } else {
                    failures.add("missed", || {
                        format!(
                            "allowed{}, and no entry covers {}: {:#?} {}",
                            allowing(&a.old, request),
                            describe_request(request),
                            summary,
                            about()
                        )
                    });
                }
                continue;
            }
            counts.covered += 1;
            if !from_inside(request, &trust) {
                counts.covered_outside += 1;
                if !covering.iter().any(|e| e.external) {
                    failures.add("missed external", || {
                        format!(
                            "{} comes from outside, and the entries covering it are not external: {covering:#?} {}",
                            describe_request(request),
                            about()
                        )
                    });
                }
            }
            if from_unnamed(request, &a.named) {
                counts.covered_unnamed += 1;
                if !covering.iter().any(|e| e.public) {
                    failures.add("missed public", || {
                        format!(
                            "{} comes from an account no policy names, and the entries covering it are not public: {covering:#?} {}",
                            describe_request(request),
                            about()
                        )
                    });
                }
            }
        }

        // The diff: nothing when the statements were only put in another order, and each
        // entry's witness let further by one policy than by the other.
        let diff = &a.diff;
        if access_case.changes.iter().all(|c| c == "reorder") {
            counts.reorders += 1;
            if !diff.new_access.is_empty() || !diff.removed_access.is_empty() {
                failures.add("access changed by reordering statements", || {
                    format!("{diff:#?} {}", about())
                });
            }
        }
        counts.new_access += diff.new_access.len();
        counts.removed_access += diff.removed_access.len();
        let n = access_case.sampled.len();
        let diff_entries = diff
            .new_access
            .iter()
            .map(|e| (e, true))
            .chain(diff.removed_access.iter().map(|e| (e, false)));
        for (i, (entry, is_new)) in diff_entries.enumerate() {
            counts.diff_witnesses += 1;
            check_flags(entry, &trust, &a.named_in_diff, &mut failures, &about);
            let (Some(old), Some(new)) = ranks(n + i) else {
                continue;
            };
            if (is_new && new > old) || (!is_new && old > new) {
                counts.diff_witnesses_confirmed += 1;
            } else {
                let kind = if is_new {
                    "new access witness not let further by the new policy"
                } else {
                    "removed access witness not let further by the old policy"
                };
                failures.add(kind, || {
                    format!(
                        "rank old {old}, new {new} (2 outright, 1 through identity policies) for {} of {entry:#?} {}",
                        describe_request(&entry.witness.request),
                        about()
                    )
                });
            }
        }
        // Every sampled request one policy lets further than the other is in the diff.
        for (i, request) in access_case.sampled.iter().enumerate() {
            let (Some(old), Some(new)) = ranks(i) else {
                continue;
            };
            let (entries, policy, kind) = match old.cmp(&new) {
                std::cmp::Ordering::Less => {
                    counts.sampled_new += 1;
                    (&diff.new_access, &a.new, "missed new access")
                }
                std::cmp::Ordering::Greater => {
                    counts.sampled_removed += 1;
                    (&diff.removed_access, &a.old, "missed removed access")
                }
                std::cmp::Ordering::Equal => continue,
            };
            if entries
                .iter()
                .any(|e| lists_action(e, &request.action) && e.covers(policy, request))
            {
                if new > old {
                    counts.sampled_new_covered += 1;
                } else {
                    counts.sampled_removed_covered += 1;
                }
            } else if left_incomplete(&diff.incomplete, &[&a.old, &a.new], request) {
                counts.diff_left_incomplete += 1;
            } else {
                failures.add(kind, || {
                    format!(
                        "rank old {old}, new {new} (2 outright, 1 through identity policies){}, and no entry covers {}: {diff:#?} {}",
                        allowing(policy, request),
                        describe_request(request),
                        about()
                    )
                });
            }
        }
    }

    println!(
        "access: {count} cases (seed {seed}) in {:.1} s: summarize {:.1} s, diff {:.1} s",
        started.elapsed().as_secs_f64(),
        summarizing.as_secs_f64(),
        diffing.as_secs_f64()
    );
    println!("  {counts:?}");
    println!("  evaluator vs simulator: {outcomes:?}");
    println!("  failures: {:?}", failures.counts);
    for line in &failures.lines {
        println!("    {line}");
    }
    assert!(
        failures.counts.is_empty(),
        "{:?}; the first of each:\n{}",
        failures.counts,
        failures.first.join("\n\n")
    );
    // The generator reaches what the checks are about (a test that cannot fail checks
    // nothing).
    for (what, n) in [
        ("external entries", counts.external_entries),
        ("public entries", counts.public_entries),
        ("allowed requests from outside", counts.covered_outside),
        (
            "allowed requests from unnamed accounts",
            counts.covered_unnamed,
        ),
        ("new access", counts.new_access),
        ("sampled new access", counts.sampled_new),
        ("sampled removed access", counts.sampled_removed),
    ] {
        assert!(n * 100 >= count, "too few {what} ({n}): {counts:?}");
    }
}

/// The Allow statements of `policy` that cover `request` (principal, action, resource and
/// conditions), with the keys their conditions read: ` (by Sid "…" on keys …)`.
fn allowing(policy: &policy::Policy, request: &Request) -> String {
    let found: Vec<String> = policy
        .statements
        .iter()
        .filter(|s| {
            s.effect == policy::Effect::Allow
                && eval::applies_to(s, &request.caller)
                && eval::covers_action_and_resource(s, request)
                && s.conditions
                    .iter()
                    .all(|c| eval::condition_holds(c, request))
        })
        .map(|s| {
            let keys: Vec<&str> = s.conditions.iter().map(|c| c.key.as_str()).collect();
            format!(
                "Sid {:?} on keys {keys:?}",
                s.sid.as_deref().unwrap_or_default()
            )
        })
        .collect();
    format!(" by {}", found.join("; "))
}

/// An entry's witness has the flags the entry claims: from outside when it is external
/// (from inside when not), from an account and organization no policy names when public.
fn check_flags(
    entry: &access::AccessEntry,
    trust: &access::Trust<'_>,
    naming: &Naming,
    failures: &mut Failures,
    about: &dyn Fn() -> String,
) {
    let witness = &entry.witness.request;
    if entry.external == from_inside(witness, trust) {
        failures.add("witness without its entry's external flag", || {
            format!("{entry:#?} {}", about())
        });
    }
    let unknown_account = request_account(witness).is_none();
    if entry.public && !(from_unnamed(witness, naming) || unknown_account) {
        failures.add("public witness from a named account", || {
            format!("{entry:#?} {}", about())
        });
    }
}
