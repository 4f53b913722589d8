//! Policy documents: parsing the JSON text into statements the evaluator can use, and
//! the findings about the document itself (grammar, placeholders, risky shapes).

use super::{
    Finding, FindingCode, Location, Severity,
    condition::{Operator, SetQualifier},
    json::{self, Json, LineIndex, Value},
    variables::has_variables,
};
use crate::domain::{is_account_id, is_partition};

/// KMS's documented key policy size limit, in bytes.
pub const MAX_POLICY_BYTES: usize = 32_768;

/// Which kind of policy a document is; the grammar differs slightly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentKind {
    /// The key's resource policy: every statement names a principal.
    KeyPolicy,
    /// An IAM identity policy of the principal: no principal element, alphanumeric Sids.
    IdentityPolicy,
}

/// A policy document to analyse.
#[derive(Debug, Clone, Copy)]
pub struct Document<'a> {
    pub kind: DocumentKind,
    /// Prefix of every finding's location path, such as `key_policy` or
    /// `identity_policies[0]`.
    pub name: &'a str,
    pub text: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Allow,
    Deny,
}

/// The principals a `Principal` or `NotPrincipal` element names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Principals {
    /// `"*"` or `{"AWS": "*"}`: everyone.
    pub any: bool,
    pub aws: Vec<String>,
    pub services: Vec<String>,
}

/// Whether an AWS principal names the whole account `account_id` (which delegates to the
/// account's IAM policies). AWS writes an account principal as the bare 12-digit id or
/// `arn:<partition>:iam::<id>:root`; nothing else (no other suffix, prefix or partition)
/// names the account.
pub fn names_account(principal: &str, account_id: &str) -> bool {
    if !is_account_id(account_id) {
        return false;
    }
    principal == account_id
        || principal
            .strip_prefix("arn:")
            .and_then(|rest| rest.split_once(':'))
            .is_some_and(|(partition, rest)| {
                is_partition(partition)
                    && rest
                        .strip_prefix("iam::")
                        .and_then(|rest| rest.strip_suffix(":root"))
                        == Some(account_id)
            })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrincipalElement {
    /// Identity policies have none.
    Absent,
    Principal(Principals),
    NotPrincipal(Principals),
}

/// `Action`/`NotAction` or `Resource`/`NotResource`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Names {
    Only(Vec<String>),
    AllExcept(Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub operator: Operator,
    /// The key as written (names are matched case-insensitively).
    pub key: String,
    pub values: Vec<String>,
    /// Whether the values hold policy variables IAM substitutes (a 2012-10-17 document,
    /// a string or ARN operator).
    pub variables: bool,
    /// The 1-based line and column where the key is written; [`Condition::location`] makes
    /// the whole location only when a finding needs it (most conditions never do, and
    /// building every path cost a third of a large policy's verification).
    pub line: u32,
    pub column: u32,
}

impl Condition {
    /// Where the key is written, in `statement` (the statement that holds the condition).
    pub fn location(&self, statement: &Statement) -> Location {
        Location {
            path: format!(
                "{}.Condition.{}[\"{}\"]",
                statement.location.path,
                self.operator.name(),
                self.key
            ),
            line: self.line,
            column: self.column,
        }
    }
}

/// A statement that parsed completely; broken statements are reported, not evaluated.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub sid: Option<String>,
    pub effect: Effect,
    pub principal: PrincipalElement,
    pub actions: Names,
    pub resources: Names,
    /// Whether the resources hold policy variables IAM substitutes (2012-10-17 documents).
    pub resource_variables: bool,
    pub conditions: Vec<Condition>,
    pub location: Location,
}

/// The usable statements of a document.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub kind: DocumentKind,
    pub statements: Vec<Statement>,
}

/// Context keys that carry a set of values in a request.
const MULTI_VALUED_KEYS: &[&str] = &[
    "kms:grantoperations",
    "kms:encryptioncontextkeys",
    "aws:tagkeys",
    "aws:calledvia",
    "aws:principalservicenameslist",
    "aws:principalorgpaths",
    "aws:resourceorgpaths",
];

/// Context keys known to be single-valued (prefixes end with `:` or `/`).
const SINGLE_VALUED_KEYS: &[&str] = &[
    "kms:viaservice",
    "kms:calleraccount",
    "kms:granteeprincipal",
    "kms:retiringprincipal",
    "kms:keyspec",
    "kms:keyusage",
    "kms:keyorigin",
    "kms:encryptionalgorithm",
    "kms:grantisforawsresource",
    "kms:encryptioncontext:",
    "aws:sourceaccount",
    "aws:sourcearn",
    "aws:sourceowner",
    "aws:principalarn",
    "aws:principalaccount",
    "aws:principalorgid",
    "aws:principaltype",
    "aws:securetransport",
    "aws:sourceip",
    "aws:sourcevpc",
    "aws:sourcevpce",
    "aws:userid",
    "aws:username",
    "aws:requesttag/",
    "aws:resourcetag/",
    "aws:principaltag/",
];

pub fn is_multi_valued(key: &str) -> bool {
    MULTI_VALUED_KEYS
        .iter()
        .any(|k| k.eq_ignore_ascii_case(key))
}

fn is_single_valued(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SINGLE_VALUED_KEYS.iter().any(|known| {
        if known.ends_with(':') || known.ends_with('/') {
            key.starts_with(known) && key.len() > known.len()
        } else {
            key == *known
        }
    })
}

const TOP_LEVEL: &[&str] = &["Version", "Id", "Statement"];
const STATEMENT_ELEMENTS: &[&str] = &[
    "Sid",
    "Effect",
    "Principal",
    "NotPrincipal",
    "Action",
    "NotAction",
    "Resource",
    "NotResource",
    "Condition",
];

/// Analyses a document: the usable statements (none when the text is not a JSON policy)
/// and the findings about the document.
pub fn analyze(document: Document<'_>) -> (Option<Policy>, Vec<Finding>) {
    let index = LineIndex::new(document.text);
    let mut analysis = Analysis {
        document,
        index,
        findings: Vec::new(),
        variables: false,
    };
    let policy = analysis.run();
    (policy, analysis.findings)
}

struct Analysis<'a> {
    document: Document<'a>,
    index: LineIndex<'a>,
    findings: Vec<Finding>,
    /// Whether the document's version substitutes policy variables (only 2012-10-17 does).
    variables: bool,
}

impl Analysis<'_> {
    fn location(&self, path: &str, offset: usize) -> Location {
        let (line, column) = self.index.position(offset);
        let path = if path.is_empty() {
            self.document.name.to_owned()
        } else if path.starts_with('[') {
            format!("{}{path}", self.document.name)
        } else {
            format!("{}.{path}", self.document.name)
        };
        Location { path, line, column }
    }

    fn report(
        &mut self,
        code: FindingCode,
        message: String,
        path: &str,
        offset: usize,
    ) -> &mut Finding {
        let location = self.location(path, offset);
        self.findings.push(Finding::new(code, message).at(location));
        let last = self.findings.len() - 1;
        &mut self.findings[last]
    }

    fn run(&mut self) -> Option<Policy> {
        let root = self.root()?;
        let Value::Object(members) = &root.value else {
            self.report(
                FindingCode::InvalidElementValue,
                format!("the policy must be a JSON object, not {}", root.kind()),
                "",
                root.offset,
            );
            return None;
        };
        self.check_members(members, TOP_LEVEL, "");
        self.find_placeholders(&root, &mut Vec::new());
        self.check_version(&root);
        let statements = self.statement_list(&root)?;
        let mut sids: Vec<String> = Vec::new();
        let mut usable = Vec::new();
        for (path, json) in statements {
            if let Some(statement) = self.statement(json, &path, &mut sids) {
                usable.push(statement);
            }
        }
        Some(Policy {
            kind: self.document.kind,
            statements: usable,
        })
    }

    /// The document's JSON, checked against KMS's size limit; `None` when it is not JSON.
    fn root(&mut self) -> Option<Json> {
        let text = self.document.text;
        if text.len() > MAX_POLICY_BYTES {
            self.report(
                FindingCode::PolicyTooLarge,
                format!("the policy is {} bytes; KMS accepts key policies of at most {MAX_POLICY_BYTES} bytes", text.len()),
                "",
                0,
            );
        }
        match json::parse(text) {
            Ok(root) => Some(root),
            Err(e) => {
                let (line, column) = self.index.position(e.offset);
                self.report(
                    FindingCode::PolicyInvalidJson,
                    format!("the policy is not valid JSON: {} at line {line}, column {column}", e.message),
                    "",
                    e.offset,
                )
                .fix = Some("fix the JSON syntax; `inspector-keyd policy render --merge-into` merges statements without hand editing".into());
                None
            }
        }
    }

    /// Reports a missing, old or invalid `Version`, and notes whether the document's
    /// version substitutes policy variables.
    fn check_version(&mut self, root: &Json) {
        match root.get("Version") {
            None => {
                self.report(
                    FindingCode::PolicyMissingVersion,
                    "the policy has no Version; without \"2012-10-17\" policy variables are not recognized".into(),
                    "",
                    root.offset,
                )
                .fix = Some("add \"Version\": \"2012-10-17\"".into());
            }
            Some(version) => match version.as_str() {
                Some("2012-10-17") => self.variables = true,
                Some("2008-10-17") => {
                    self.report(
                        FindingCode::PolicyOldVersion,
                        "Version \"2008-10-17\" is the old policy language; policy variables are not recognized".into(),
                        "Version",
                        version.offset,
                    )
                    .fix = Some("use \"Version\": \"2012-10-17\"".into());
                }
                _ => {
                    self.report(
                        FindingCode::PolicyInvalidVersion,
                        format!("Version must be \"2012-10-17\", not {}", short(version)),
                        "Version",
                        version.offset,
                    )
                    .fix = Some("use \"Version\": \"2012-10-17\"".into());
                }
            },
        }
    }

    /// The statements with their paths (`Statement` alone, or `Statement[i]`); `None` when
    /// `Statement` is neither an object nor an array.
    fn statement_list<'j>(&mut self, root: &'j Json) -> Option<Vec<(String, &'j Json)>> {
        let statements: Vec<(String, &Json)> = match root.get("Statement") {
            None => Vec::new(),
            Some(
                one @ Json {
                    value: Value::Object(_),
                    ..
                },
            ) => vec![("Statement".to_owned(), one)],
            Some(Json {
                value: Value::Array(items),
                ..
            }) => items
                .iter()
                .enumerate()
                .map(|(i, item)| (format!("Statement[{i}]"), item))
                .collect(),
            Some(other) => {
                self.report(
                    FindingCode::InvalidElementValue,
                    format!(
                        "Statement must be an object or an array of objects, not {}",
                        other.kind()
                    ),
                    "Statement",
                    other.offset,
                );
                return None;
            }
        };
        if statements.is_empty() {
            self.report(
                FindingCode::PolicyNoStatements,
                "the policy has no statements".into(),
                "",
                root.offset,
            );
        }
        Some(statements)
    }

    /// Reports unknown and duplicated members of an object.
    fn check_members(&mut self, members: &[(json::Key, Json)], known: &[&str], path: &str) {
        let mut seen: Vec<&str> = Vec::new();
        for (key, _) in members {
            let here = join(path, &key.name);
            if seen.contains(&key.name.as_str()) {
                self.report(
                    FindingCode::DuplicateElement,
                    format!("`{}` appears twice; AWS would keep only one", key.name),
                    &here,
                    key.offset,
                );
            }
            seen.push(&key.name);
            if !known.contains(&key.name.as_str()) {
                let hint = known
                    .iter()
                    .find(|k| k.eq_ignore_ascii_case(&key.name))
                    .map(|k| format!(" (element names are case-sensitive: `{k}`)"))
                    .unwrap_or_default();
                self.report(
                    FindingCode::UnknownElement,
                    format!(
                        "`{}` is not a policy element here; expected one of {}{hint}",
                        key.name,
                        known.join(", ")
                    ),
                    &here,
                    key.offset,
                );
            }
        }
    }

    fn statement(&mut self, json: &Json, path: &str, sids: &mut Vec<String>) -> Option<Statement> {
        let Value::Object(members) = &json.value else {
            self.report(
                FindingCode::InvalidElementValue,
                format!("a statement must be an object, not {}", json.kind()),
                path,
                json.offset,
            );
            return None;
        };
        self.check_members(members, STATEMENT_ELEMENTS, path);
        let sid = self.sid(json, path, sids);
        let before = self.findings.len();
        let effect = self.effect(json, path);
        let principal = self.principal_element(json, path, effect);
        let actions = self.names(json, path, "Action", "NotAction");
        let resources = self.names(json, path, "Resource", "NotResource");
        let conditions = self.conditions(json, path);
        if let (Some(Effect::Allow), Some(PrincipalElement::Principal(allowed))) =
            (effect, &principal)
        {
            self.check_allowed_principals(json, path, allowed, conditions.as_deref());
        }
        // The findings about the statement's elements name its Sid.
        for finding in &mut self.findings[before..] {
            finding.sid = finding.sid.take().or_else(|| sid.clone());
        }
        let (Some(effect), Some(principal), Some(actions), Some(resources), Some(conditions)) =
            (effect, principal, actions, resources, conditions)
        else {
            return None;
        };
        let resource_variables = self.variables
            && match &resources {
                Names::Only(r) | Names::AllExcept(r) => r.iter().any(|r| has_variables(r)),
            };
        Some(Statement {
            sid,
            effect,
            principal,
            actions,
            resources,
            resource_variables,
            conditions,
            location: self.location(path, json.offset),
        })
    }

    /// The statement's Sid; reports one that is not a string, is used twice, or (in an
    /// identity policy) is not alphanumeric. `sids` holds the Sids of the statements before.
    fn sid(&mut self, json: &Json, path: &str, sids: &mut Vec<String>) -> Option<String> {
        match json.get("Sid") {
            None => None,
            Some(Json {
                value: Value::String(sid),
                offset,
            }) => {
                if sids.contains(sid) {
                    self.report(
                        FindingCode::DuplicateSid,
                        format!(
                            "Sid `{sid}` is used by more than one statement; Sids must be unique"
                        ),
                        &join(path, "Sid"),
                        *offset,
                    )
                    .sid = Some(sid.clone());
                }
                sids.push(sid.clone());
                if self.document.kind == DocumentKind::IdentityPolicy
                    && !sid.chars().all(|c| c.is_ascii_alphanumeric())
                {
                    let finding = self.report(
                        FindingCode::InvalidSid,
                        format!("Sid `{sid}` has characters other than A-Z, a-z, 0-9, which IAM refuses in identity policies"),
                        &join(path, "Sid"),
                        *offset,
                    );
                    finding.sid = Some(sid.clone());
                    finding.fix = Some(format!(
                        "rename it, for example `{}`",
                        alphanumeric_sid(sid)
                    ));
                }
                Some(sid.clone())
            }
            Some(other) => {
                self.report(
                    FindingCode::InvalidElementValue,
                    format!("Sid must be a string, not {}", other.kind()),
                    &join(path, "Sid"),
                    other.offset,
                );
                None
            }
        }
    }

    fn effect(&mut self, json: &Json, path: &str) -> Option<Effect> {
        match json.get("Effect") {
            None => {
                self.report(
                    FindingCode::StatementMissingElement,
                    "the statement has no Effect".into(),
                    path,
                    json.offset,
                );
                None
            }
            Some(e) => match e.as_str() {
                Some("Allow") => Some(Effect::Allow),
                Some("Deny") => Some(Effect::Deny),
                _ => {
                    self.report(
                        FindingCode::InvalidElementValue,
                        format!("Effect must be \"Allow\" or \"Deny\", not {}", short(e)),
                        &join(path, "Effect"),
                        e.offset,
                    );
                    None
                }
            },
        }
    }

    /// Reports an Allow statement's principals that reach too far: every principal with no
    /// condition, or a service principal with no condition on the source it acts for.
    /// `conditions` is `None` when the Condition block did not parse.
    fn check_allowed_principals(
        &mut self,
        json: &Json,
        path: &str,
        allowed: &Principals,
        conditions: Option<&[Condition]>,
    ) {
        let offset = || json.get("Principal").map_or(json.offset, |p| p.offset);
        if allowed.any && json.get("Condition").is_none() {
            self.report(
                FindingCode::PublicPrincipal,
                "the statement allows every principal of every AWS account, with no condition".into(),
                &join(path, "Principal"),
                offset(),
            )
            .fix = Some("name the principals, or add a condition such as kms:CallerAccount or aws:PrincipalOrgID".into());
        }
        if !allowed.services.is_empty()
            && !conditions.into_iter().flatten().any(|c| {
                [
                    "aws:SourceArn",
                    "aws:SourceAccount",
                    "aws:SourceOrgID",
                    "aws:SourceOrgPaths",
                ]
                .iter()
                .any(|k| c.key.eq_ignore_ascii_case(k))
            })
        {
            self.report(
                FindingCode::ServicePrincipalWithoutSource,
                format!(
                    "the statement allows service principal {} without a source condition, so the service may use the key on behalf of any account",
                    allowed.services.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")
                ),
                &join(path, "Principal"),
                offset(),
            )
            .fix = Some("add a condition on aws:SourceAccount or aws:SourceArn".into());
        }
    }

    fn principal_element(
        &mut self,
        json: &Json,
        path: &str,
        effect: Option<Effect>,
    ) -> Option<PrincipalElement> {
        let principal = json.get("Principal");
        let not_principal = json.get("NotPrincipal");
        if self.document.kind == DocumentKind::IdentityPolicy {
            for (name, element) in [("Principal", principal), ("NotPrincipal", not_principal)] {
                if let Some(element) = element {
                    self.report(
                        FindingCode::PrincipalNotAllowed,
                        format!("identity policies cannot have a {name} element; the principal is whoever the policy is attached to"),
                        &join(path, name),
                        element.offset,
                    );
                }
            }
            return (principal.is_none() && not_principal.is_none())
                .then_some(PrincipalElement::Absent);
        }
        match (principal, not_principal) {
            (Some(_), Some(n)) => {
                self.report(
                    FindingCode::StatementConflictingElements,
                    "the statement has both Principal and NotPrincipal; use one".into(),
                    &join(path, "NotPrincipal"),
                    n.offset,
                );
                None
            }
            (None, None) => {
                self.report(
                    FindingCode::StatementMissingElement,
                    "the statement has no Principal; every key policy statement must name its principals".into(),
                    path,
                    json.offset,
                );
                None
            }
            (Some(p), None) => self
                .principals(p, &join(path, "Principal"))
                .map(PrincipalElement::Principal),
            (None, Some(n)) => {
                if effect == Some(Effect::Allow) {
                    self.report(
                        FindingCode::AllowWithNotPrincipal,
                        "Allow with NotPrincipal allows everyone not listed; AWS supports NotPrincipal only with Deny".into(),
                        &join(path, "NotPrincipal"),
                        n.offset,
                    )
                    .fix = Some("use Principal, or Deny with a condition on aws:PrincipalArn".into());
                }
                self.principals(n, &join(path, "NotPrincipal"))
                    .map(PrincipalElement::NotPrincipal)
            }
        }
    }

    fn principals(&mut self, json: &Json, path: &str) -> Option<Principals> {
        let mut principals = Principals::default();
        match &json.value {
            Value::String(s) if s == "*" => principals.any = true,
            Value::Object(members) => {
                self.check_members(
                    members,
                    &["AWS", "Service", "Federated", "CanonicalUser"],
                    path,
                );
                for (key, value) in members {
                    let names = self.strings(value, || join(path, &key.name))?;
                    match key.name.as_str() {
                        "AWS" => {
                            principals.any |= names.iter().any(|n| n == "*");
                            principals.aws.extend(names);
                        }
                        "Service" => principals.services.extend(names),
                        _ => {}
                    }
                }
            }
            _ => {
                self.report(
                    FindingCode::InvalidElementValue,
                    format!("a principal must be \"*\" or an object such as {{\"AWS\": \"<ARN>\"}}, not {}", short(json)),
                    path,
                    json.offset,
                );
                return None;
            }
        }
        Some(principals)
    }

    /// A string or a non-empty array of strings. (`path` is only built for a finding.)
    fn strings(&mut self, json: &Json, path: impl Fn() -> String) -> Option<Vec<String>> {
        let result = match &json.value {
            Value::String(s) => Some(vec![s.clone()]),
            Value::Array(items) if !items.is_empty() => items
                .iter()
                .map(|i| i.as_str().map(str::to_owned))
                .collect(),
            _ => None,
        };
        if result.is_none() {
            self.report(
                FindingCode::InvalidElementValue,
                format!(
                    "expected a string or a non-empty array of strings, not {}",
                    short(json)
                ),
                &path(),
                json.offset,
            );
        }
        result
    }

    fn names(
        &mut self,
        json: &Json,
        path: &str,
        element: &str,
        not_element: &str,
    ) -> Option<Names> {
        match (json.get(element), json.get(not_element)) {
            (Some(_), Some(n)) => {
                self.report(
                    FindingCode::StatementConflictingElements,
                    format!("the statement has both {element} and {not_element}; use one"),
                    &join(path, not_element),
                    n.offset,
                );
                None
            }
            (None, None) => {
                self.report(
                    FindingCode::StatementMissingElement,
                    format!(
                        "the statement has no {element} (or {not_element}), so it has no effect"
                    ),
                    path,
                    json.offset,
                );
                None
            }
            (Some(v), None) => self.strings(v, || join(path, element)).map(Names::Only),
            (None, Some(v)) => self
                .strings(v, || join(path, not_element))
                .map(Names::AllExcept),
        }
    }

    fn conditions(&mut self, json: &Json, path: &str) -> Option<Vec<Condition>> {
        let Some(block) = json.get("Condition") else {
            return Some(Vec::new());
        };
        let Value::Object(operators) = &block.value else {
            self.report(
                FindingCode::InvalidElementValue,
                format!("Condition must be an object, not {}", block.kind()),
                &join(path, "Condition"),
                block.offset,
            );
            return None;
        };
        let op_path = |op: &str| format!("{path}.Condition.{op}");
        let mut conditions = Vec::new();
        let mut usable = true;
        for (op_key, keys) in operators {
            let Some(operator) = Operator::parse(&op_key.name) else {
                self.report(
                    FindingCode::InvalidConditionOperator,
                    format!("`{}` is not a condition operator", op_key.name),
                    &op_path(&op_key.name),
                    op_key.offset,
                )
                .fix = Some("use an operator such as StringEquals, StringLike, ArnLike, Bool or Null, with an optional ForAllValues:/ForAnyValue: prefix or IfExists suffix".into());
                usable = false;
                continue;
            };
            let Value::Object(entries) = &keys.value else {
                self.report(
                    FindingCode::InvalidElementValue,
                    format!("`{}` must map condition keys to values", op_key.name),
                    &op_path(&op_key.name),
                    keys.offset,
                );
                usable = false;
                continue;
            };
            for (key, value) in entries {
                let key_path = || format!("{}[\"{}\"]", op_path(&op_key.name), key.name);
                let values: Option<Vec<String>> = match &value.value {
                    Value::Array(items) => items.iter().map(scalar).collect(),
                    _ => scalar(value).map(|v| vec![v]),
                };
                let Some(values) = values else {
                    self.report(
                        FindingCode::InvalidElementValue,
                        format!(
                            "the values of `{}` must be strings, numbers or booleans",
                            key.name
                        ),
                        &key_path(),
                        value.offset,
                    );
                    usable = false;
                    continue;
                };
                self.check_condition(
                    operator,
                    &op_key.name,
                    &key.name,
                    &values,
                    key_path,
                    key.offset,
                );
                let (line, column) = self.index.position(key.offset);
                let variables = self.variables
                    && operator.substitutes_variables()
                    && values.iter().any(|v| has_variables(v));
                conditions.push(Condition {
                    operator,
                    key: key.name.clone(),
                    values,
                    variables,
                    line,
                    column,
                });
            }
        }
        usable.then_some(conditions)
    }

    fn check_condition(
        &mut self,
        operator: Operator,
        op_name: &str,
        key: &str,
        values: &[String],
        path: impl Fn() -> String,
        offset: usize,
    ) {
        let base = operator.base;
        use super::condition::Base;
        if operator.set.is_none() && base != Base::Null && is_multi_valued(key) {
            self.report(
                FindingCode::MissingSetQualifier,
                format!("`{key}` has multiple values in a request; `{op_name}` needs ForAllValues: or ForAnyValue: to say how the sets compare"),
                &path(),
                offset,
            )
            .fix = Some(format!("use `ForAllValues:{op_name}` to allow only the listed values"));
        }
        if let Some(set) = operator.set
            && is_single_valued(key)
        {
            let lower = key.to_ascii_lowercase();
            // KMS refuses such a key policy outright (OverlyPermissiveCondition).
            let refused_by_kms = set == SetQualifier::ForAllValues
                && self.document.kind == DocumentKind::KeyPolicy
                && (lower.starts_with("kms:encryptioncontext:")
                    || lower.starts_with("aws:requesttag/"));
            let (severity, qualifier) = match set {
                _ if refused_by_kms => (Severity::Error, "ForAllValues"),
                SetQualifier::ForAllValues => (Severity::SecurityWarning, "ForAllValues"),
                SetQualifier::ForAnyValue => (Severity::Warning, "ForAnyValue"),
            };
            let consequence = if refused_by_kms {
                "KMS refuses the key policy (OverlyPermissiveCondition): it would match requests without the key"
            } else {
                "it can be overly permissive (ForAllValues matches requests without the key)"
            };
            let finding = self.report(
                FindingCode::SetQualifierOnSingleValuedKey,
                format!("`{key}` is single-valued; with {qualifier}: {consequence}"),
                &path(),
                offset,
            );
            // The code's severity note: KMS refuses some, ForAnyValue: is milder.
            finding.severity = severity;
            finding.fix = Some(format!("remove `{qualifier}:`"));
        }
        let wildcard = values.iter().any(|v| v.contains('*') || v.contains('?'));
        if wildcard
            && matches!(
                base,
                Base::StringEquals
                    | Base::StringNotEquals
                    | Base::StringEqualsIgnoreCase
                    | Base::StringNotEqualsIgnoreCase
            )
        {
            self.report(
                FindingCode::WildcardWithoutLike,
                format!("a value of `{key}` has `*` or `?`, which `{op_name}` compares literally"),
                &path(),
                offset,
            )
            .fix = Some("use StringLike (or StringNotLike) for wildcards".into());
        }
    }

    /// Reports every string value that still holds a documentation placeholder. `steps`
    /// is the path so far, formatted only for a finding.
    fn find_placeholders<'j>(&mut self, json: &'j Json, steps: &mut Vec<Step<'j>>) {
        match &json.value {
            Value::String(s) => {
                if let Some(placeholder) = placeholder(s) {
                    self.report(
                        FindingCode::PlaceholderNotReplaced,
                        format!("`{s}` still holds the placeholder `{placeholder}` from the documentation"),
                        &format_steps(steps),
                        json.offset,
                    )
                    .fix = Some(match placeholder {
                        "account-id" => "replace it with the 12-digit AWS account id".into(),
                        "role-ARN" => "replace it with the ARN of the IAM role".into(),
                        _ => "replace it with the AWS Region where Inspector scans, such as us-east-1".into(),
                    });
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    steps.push(Step::Index(i));
                    self.find_placeholders(item, steps);
                    steps.pop();
                }
            }
            Value::Object(members) => {
                for (key, value) in members {
                    steps.push(Step::Key(&key.name));
                    self.find_placeholders(value, steps);
                    steps.pop();
                }
            }
            _ => {}
        }
    }
}

/// One step of a JSON path.
enum Step<'j> {
    Key(&'j str),
    Index(usize),
}

/// `Statement[0].Condition.StringEquals["kms:ViaService"][1]`.
fn format_steps(steps: &[Step<'_>]) -> String {
    let mut path = String::new();
    for step in steps {
        match step {
            Step::Index(i) => path.push_str(&format!("[{i}]")),
            Step::Key(key) if key.contains([':', '.']) => path.push_str(&format!("[\"{key}\"]")),
            Step::Key(key) if path.is_empty() => path.push_str(key),
            Step::Key(key) => {
                path.push('.');
                path.push_str(key);
            }
        }
    }
    path
}

/// The documentation placeholder a value still holds, if any: `<Region>`-style markers
/// anywhere, a bare `Region`/`account-id`/`role-ARN`, the Region part of a service host
/// name or of an ARN, or the account part of an ARN. (Names chosen by people, such as a
/// role's, are not read, so a role named `region` is not a placeholder.)
fn placeholder(value: &str) -> Option<&'static str> {
    const NAMES: [(&str, &str); 3] = [
        ("Region", "<region>"),
        ("account-id", "<account-id>"),
        ("role-ARN", "<role-arn>"),
    ];
    let is = |text: &str, name: &str| text.trim().eq_ignore_ascii_case(name);
    let marked = value.contains('<').then(|| value.to_ascii_lowercase());
    if let Some((name, _)) = NAMES.iter().find(|(name, marker)| {
        is(value, name) || marked.as_ref().is_some_and(|lower| lower.contains(marker))
    }) {
        return Some(name);
    }
    let host = value
        .len()
        .checked_sub(14)
        .and_then(|start| value.get(start..))
        .is_some_and(|suffix| suffix.eq_ignore_ascii_case(".amazonaws.com"));
    if host && value.split('.').any(|part| is(part, "Region")) {
        return Some("Region");
    }
    if value
        .get(..4)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("arn:"))
    {
        let parts: Vec<&str> = value.splitn(6, ':').collect();
        if parts.get(3).is_some_and(|p| is(p, "Region")) {
            return Some("Region");
        }
        if parts.get(4).is_some_and(|p| is(p, "account-id")) {
            return Some("account-id");
        }
    }
    None
}

/// `allow Q to use the key` → `AllowQToUseTheKey`.
fn alphanumeric_sid(sid: &str) -> String {
    sid.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(|word| {
            let mut chars = word.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn scalar(json: &Json) -> Option<String> {
    match &json.value {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.clone()),
        _ => None,
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

/// A short rendering of a value for messages.
fn short(json: &Json) -> String {
    match &json.value {
        Value::String(s) => format!("\"{}\"", s.chars().take(60).collect::<String>()),
        Value::Number(n) => n.clone(),
        Value::Bool(b) => b.to_string(),
        _ => json.kind().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::names_account;

    #[test]
    fn account_principals_are_the_bare_id_or_the_root_arn_of_a_partition() {
        let account = "111122223333";
        for name in [
            "111122223333",
            "arn:aws:iam::111122223333:root",
            "arn:aws-cn:iam::111122223333:root",
            "arn:aws-us-gov:iam::111122223333:root",
        ] {
            assert!(names_account(name, account), "{name}");
        }
        for name in [
            "arn:aws:iam::111122223333:rootx",
            "xarn:aws:iam::111122223333:root",
            "arn:aws:iam::11112222333:root",
            "arn:aws:iam::444455556666:root",
            "arn:aws-iso:iam::111122223333:root",
            "arn::iam::111122223333:root",
            "arn:aws:sts::111122223333:root",
            "arn:aws:iam:us-east-1:111122223333:root",
            "arn:aws:iam::111122223333:role/root",
            "garbage:iam::111122223333:root",
            "arn:aws:iam::111122223333:root ",
            "1111222233334",
            "",
        ] {
            assert!(!names_account(name, account), "{name}");
        }
        // Only a well-formed account can be named at all.
        assert!(!names_account("11112222333", "11112222333"));
        assert!(!names_account("arn:aws:iam:::root", ""));
    }
}
