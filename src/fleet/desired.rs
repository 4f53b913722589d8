//! The desired-state file: which key each managed account and Region should use for each
//! resource type, as `[[key]]` entries (docs/fleet.md). An entry matches the scopes its
//! accounts and regions name (or `*`) and one target; a later entry overrides earlier ones
//! for the scopes it matches. A pure library: the caller reads the file, plans and applies.

use std::{collections::HashMap, fmt, ops::Range};

use annotate_snippets::{AnnotationKind, Group, Level, Renderer, Snippet};
use serde::Deserialize;
use serde_path_to_error::Segment;
use toml::Spanned;

use crate::domain::{
    KeyArn, KeyArnError, ResourceType, SUPPORTED_TARGETS, ScanType, Scope, Target, is_account_id,
    is_partition, is_region_name, partition_of,
};

/// In `accounts`, every managed account; in `regions`, each account's managed Regions.
const EVERY: &str = "*";

/// `kms_key` for the AWS owned key (no customer managed key set).
const AWS_OWNED: &str = "aws-owned";

const ALIAS_PREFIX: &str = "alias/";

/// Aliases of AWS managed keys, which Inspector cannot use.
const AWS_MANAGED_ALIAS_PREFIX: &str = "alias/aws/";

/// The longest alias name after `alias/` that KMS accepts.
const ALIAS_NAME_MAX: usize = 250;

/// The only scan type with customer managed keys: an entry names a resource type only.
const SCAN_TYPE: ScanType = ScanType::Code;

/// What every entry has, for messages.
const ENTRY_FIELDS: &str = "accounts, regions, resource_type and kms_key";

/// The key an entry wants.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DesiredKey {
    /// The AWS owned key: no customer managed key is set.
    AwsOwned,
    /// An alias name (`alias/inspector-code`), resolved in each account and Region it is
    /// wanted in.
    Alias(String),
    /// One key, by its ARN.
    Key(KeyArn),
}

/// As the file spells it (an alias ARN is kept as its alias name).
impl fmt::Display for DesiredKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DesiredKey::AwsOwned => f.write_str(AWS_OWNED),
            DesiredKey::Alias(name) => f.write_str(name),
            DesiredKey::Key(arn) => write!(f, "{arn}"),
        }
    }
}

/// The desired state: the file's entries in order, each validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredState {
    entries: Vec<Entry>,
}

/// One `[[key]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// The line of the entry's `[[key]]` header (or of its inline table).
    line: usize,
    accounts: Names,
    regions: Names,
    resource_type: ResourceType,
    key: DesiredKey,
}

/// The accounts, or the Regions, of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Names {
    /// `["*"]`.
    Every,
    /// The names listed, each with its line.
    Listed(Vec<(String, usize)>),
}

impl Names {
    fn contains(&self, name: &str) -> bool {
        match self {
            Names::Every => true,
            Names::Listed(names) => names.iter().any(|(listed, _)| listed == name),
        }
    }

    /// The one name listed, if only one is.
    fn only(&self) -> Option<&str> {
        match self {
            Names::Listed(names) if names.len() == 1 => names.first().map(|(n, _)| n.as_str()),
            _ => None,
        }
    }

    fn listed(&self) -> &[(String, usize)] {
        match self {
            Names::Every => &[],
            Names::Listed(names) => names,
        }
    }
}

impl Entry {
    fn matches(&self, scope: Scope, target: Target) -> bool {
        target.scan_type() == SCAN_TYPE
            && target.resource_type() == self.resource_type
            && self.accounts.contains(scope.account_id())
            && self.regions.contains(scope.region())
    }
}

impl DesiredState {
    /// The desired state a file's text says, or the first thing wrong in it, with its line
    /// and column.
    pub fn parse(text: &str) -> Result<DesiredState, DesiredStateError> {
        let file = deserialize(text)?;
        let Some(raw_entries) = file.key else {
            return Err(DesiredStateError::at(text, 0..0, nothing_desired()));
        };
        let span = raw_entries.span();
        let raw_entries = raw_entries.into_inner();
        if raw_entries.is_empty() {
            return Err(DesiredStateError::at(text, span, nothing_desired()));
        }
        let lines = LineStarts::of(text);
        let entries = raw_entries
            .into_iter()
            .map(|raw| Entry::validate(text, &lines, raw))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(DesiredState { entries })
    }

    /// The key the last entry matching `scope` and `target` wants, with that entry's line;
    /// `None` when no entry matches: that scope and target are not part of the desired
    /// state, and are left as they are.
    pub fn wanted(&self, scope: Scope, target: Target) -> Option<(&DesiredKey, usize)> {
        self.entries
            .iter()
            .rev()
            .find(|entry| entry.matches(scope, target))
            .map(|entry| (&entry.key, entry.line))
    }

    /// Each account id an entry names (not `*`), with the line it is on, in file order: the
    /// planner reports those the sidecar does not manage.
    pub fn named_accounts(&self) -> impl Iterator<Item = (&str, usize)> {
        self.entries
            .iter()
            .flat_map(|entry| entry.accounts.listed())
            .map(|(name, line)| (name.as_str(), *line))
    }

    /// Each Region an entry names (not `*`), with the line it is on, in file order.
    pub fn named_regions(&self) -> impl Iterator<Item = (&str, usize)> {
        self.entries
            .iter()
            .flat_map(|entry| entry.regions.listed())
            .map(|(name, line)| (name.as_str(), *line))
    }

    /// How many entries the file has.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Never true: a file with no entries is refused.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn nothing_desired() -> String {
    format!(
        "nothing desired: the file has no [[key]] entries (each has {ENTRY_FIELDS}, and says which key those accounts and Regions use for that resource type)"
    )
}

/// Why a desired-state file is refused, and where: the 1-based line and column (in
/// characters) of the offending value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredStateError {
    line: usize,
    column: usize,
    span: Range<usize>,
    message: String,
}

impl DesiredStateError {
    fn at(text: &str, span: Range<usize>, message: String) -> DesiredStateError {
        let start = floor_char_boundary(text, span.start);
        let end = floor_char_boundary(text, span.end).max(start);
        let (line, column) = line_and_column(text, start);
        DesiredStateError {
            line,
            column,
            span: start..end,
            message,
        }
    }

    /// 1-based.
    pub fn line(&self) -> usize {
        self.line
    }

    /// 1-based, in characters.
    pub fn column(&self) -> usize {
        self.column
    }

    /// What is wrong, naming the field and what it expects.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The byte range of the offending value in the text parsed.
    pub fn span(&self) -> Range<usize> {
        self.span.clone()
    }

    /// The error as a diagnostic on `text` (the text parsed), the file named `path`: the
    /// message, then the offending line with a caret under the value. `color`: ANSI
    /// colours, for a terminal.
    pub fn render(&self, text: &str, path: &str, color: bool) -> String {
        let renderer = if color {
            Renderer::styled()
        } else {
            Renderer::plain()
        };
        // Kept inside `text` even when it is not the text parsed.
        let start = floor_char_boundary(text, self.span.start);
        let end = floor_char_boundary(text, self.span.end).max(start);
        let group = Group::with_title(Level::ERROR.primary_title(self.message.as_str())).element(
            Snippet::source(text)
                .path(path)
                .annotation(AnnotationKind::Primary.span(start..end)),
        );
        renderer.render(&[group])
    }
}

/// `line 3, column 12: message`.
impl fmt::Display for DesiredStateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

impl std::error::Error for DesiredStateError {}

/// The largest char boundary of `text` at or before `offset`.
fn floor_char_boundary(text: &str, offset: usize) -> usize {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset = offset.saturating_sub(1);
    }
    offset
}

/// The 1-based line and column (in characters) of a byte offset.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text
        .get(..floor_char_boundary(text, offset))
        .unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    let column = before.get(line_start..).unwrap_or_default().chars().count() + 1;
    (line, column)
}

/// Where each line starts: the line of every name listed, found without reading the text
/// again for each.
struct LineStarts(Vec<usize>);

impl LineStarts {
    fn of(text: &str) -> LineStarts {
        let starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1));
        LineStarts(starts.collect())
    }

    /// The 1-based line of a byte offset.
    fn line(&self, offset: usize) -> usize {
        self.0.partition_point(|&start| start <= offset)
    }
}

/// The file as written, before validation; every value keeps its span for messages.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    key: Option<Spanned<Vec<Spanned<RawEntry>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    accounts: Spanned<Vec<Spanned<String>>>,
    regions: Spanned<Vec<Spanned<String>>>,
    resource_type: Spanned<String>,
    kms_key: Spanned<String>,
}

/// The file's TOML into its shape, or the syntax or shape error, naming the field.
fn deserialize(text: &str) -> Result<RawFile, DesiredStateError> {
    let deserializer = toml::Deserializer::parse(text).map_err(|e| {
        DesiredStateError::at(
            text,
            e.span().unwrap_or(0..0),
            format!("invalid TOML: {}", e.message()),
        )
    })?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| shape_error(text, e))
}

/// A value of the wrong type, an unknown field or a missing one, with the field it is in
/// (toml's own message names the value, not the field).
fn shape_error(
    text: &str,
    error: serde_path_to_error::Error<toml::de::Error>,
) -> DesiredStateError {
    let in_entry = error
        .path()
        .iter()
        .any(|segment| matches!(segment, Segment::Seq { .. }));
    // Spanned values add segments of their own, named `$__serde_spanned_private_…`.
    let field = error
        .path()
        .iter()
        .filter_map(|segment| match segment {
            Segment::Map { key } if !key.starts_with('$') => Some(key.clone()),
            _ => None,
        })
        .next_back();
    let error = error.into_inner();
    // serde names the entry by its Rust type; and quotes a key's name whole, however long.
    let found: String = error
        .message()
        .replace("struct RawEntry", "a table")
        .chars()
        .filter(|c| !c.is_control())
        .take(MESSAGE_FROM_SERDE)
        .collect();
    let message = if found.starts_with("unknown field") {
        if in_entry {
            format!("{found} (in a [[key]] entry)")
        } else {
            format!("{found}: the file holds [[key]] entries only")
        }
    } else if found.starts_with("missing field") {
        format!("{found} in a [[key]] entry: each entry has {ENTRY_FIELDS}")
    } else {
        match field.as_deref().and_then(|f| expected(f).map(|e| (f, e))) {
            Some((field, expected)) => format!("`{field}` must be {expected}: {found}"),
            None => found,
        }
    };
    DesiredStateError::at(text, error.span().unwrap_or(0..0), message)
}

/// What a field holds, for messages.
fn expected(field: &str) -> Option<String> {
    Some(match field {
        "key" => "[[key]] entries (an array of tables)".to_owned(),
        "accounts" => ACCOUNTS.expected(),
        "regions" => REGIONS.expected(),
        "resource_type" => format!("a string: {}", resource_types()),
        "kms_key" => format!("a string: {}", key_forms()),
        _ => return None,
    })
}

/// `"AWS_LAMBDA_FUNCTION" or "CODE_REPOSITORY"`: the resource types of the scan type.
fn resource_types() -> String {
    let names: Vec<String> = SUPPORTED_TARGETS
        .iter()
        .filter(|(scan_type, _)| *scan_type == SCAN_TYPE)
        .map(|(_, resource_type)| format!("\"{}\"", resource_type.as_aws_str()))
        .collect();
    names.join(" or ")
}

fn key_forms() -> String {
    format!(
        "\"{AWS_OWNED}\", an alias name (alias/<name>), a key ARN (arn:aws:kms:<region>:<account-id>:key/<key-id>) or, in an entry of one account and one Region, an alias ARN of that account and Region (arn:aws:kms:<region>:<account-id>:alias/<name>)"
    )
}

/// The most of serde's message a refusal repeats (it names the expected fields too).
const MESSAGE_FROM_SERDE: usize = 400;

/// A value as messages show it: short and printable.
fn shown(value: &str) -> String {
    value
        .chars()
        .filter(|c| !c.is_control())
        .take(160)
        .collect()
}

/// `accounts` or `regions`: what its names are.
struct ListField {
    name: &'static str,
    /// `an account id (12 digits)`.
    item: &'static str,
    /// What `*` means there.
    every: &'static str,
    is_valid: fn(&str) -> bool,
}

const ACCOUNTS: ListField = ListField {
    name: "accounts",
    item: "an account id (12 digits)",
    every: "every managed account",
    is_valid: is_account_id,
};

const REGIONS: ListField = ListField {
    name: "regions",
    item: "a Region name (such as us-east-1)",
    every: "each account's managed Regions",
    is_valid: is_region_name,
};

impl ListField {
    fn expected(&self) -> String {
        format!(
            "a list of strings, each {}, or [\"*\"] for {}",
            self.item, self.every
        )
    }

    fn names(
        &self,
        text: &str,
        lines: &LineStarts,
        list: Spanned<Vec<Spanned<String>>>,
    ) -> Result<Names, DesiredStateError> {
        let name = self.name;
        let span = list.span();
        let values = list.into_inner();
        if values.is_empty() {
            return Err(DesiredStateError::at(
                text,
                span,
                format!("`{name}` is empty: it must be {}", self.expected()),
            ));
        }
        let mut listed: Vec<(String, usize)> = Vec::with_capacity(values.len());
        let mut first_of: HashMap<&str, &Spanned<String>> = HashMap::with_capacity(values.len());
        for value in &values {
            let at = |message: String| DesiredStateError::at(text, value.span(), message);
            let name_here = value.get_ref();
            if name_here == EVERY {
                if values.len() > 1 {
                    return Err(at(format!(
                        "`{name}` has \"*\" with other values: \"*\" alone means {}",
                        self.every
                    )));
                }
                return Ok(Names::Every);
            }
            if !(self.is_valid)(name_here) {
                return Err(at(format!(
                    "`{name}`: \"{}\" is not {}, nor \"*\" for {}",
                    shown(name_here),
                    self.item,
                    self.every
                )));
            }
            if let Some(first) = first_of.insert(name_here, value) {
                let (line, column) = line_and_column(text, first.span().start);
                return Err(at(format!(
                    "`{name}` lists \"{name_here}\" twice (first at line {line}, column {column})"
                )));
            }
            listed.push((name_here.clone(), lines.line(value.span().start)));
        }
        Ok(Names::Listed(listed))
    }
}

impl Entry {
    fn validate(
        text: &str,
        lines: &LineStarts,
        raw: Spanned<RawEntry>,
    ) -> Result<Entry, DesiredStateError> {
        let line = lines.line(raw.span().start);
        let raw = raw.into_inner();
        let accounts = ACCOUNTS.names(text, lines, raw.accounts)?;
        let regions = REGIONS.names(text, lines, raw.regions)?;
        let resource_type = resource_type(text, &raw.resource_type)?;
        let key = desired_key(text, &raw.kms_key, &accounts, &regions)?;
        Ok(Entry {
            line,
            accounts,
            regions,
            resource_type,
            key,
        })
    }
}

fn resource_type(text: &str, value: &Spanned<String>) -> Result<ResourceType, DesiredStateError> {
    let at = |message: String| DesiredStateError::at(text, value.span(), message);
    match ResourceType::from_aws_str(value.get_ref()) {
        Some(resource_type) if Target::new(SCAN_TYPE, resource_type).is_some() => Ok(resource_type),
        Some(resource_type) => Err(at(format!(
            "`resource_type` \"{}\": Inspector has customer managed keys for {} only",
            resource_type.as_aws_str(),
            resource_types()
        ))),
        None => Err(at(format!(
            "`resource_type` \"{}\" is not {}",
            shown(value.get_ref()),
            resource_types()
        ))),
    }
}

fn desired_key(
    text: &str,
    value: &Spanned<String>,
    accounts: &Names,
    regions: &Names,
) -> Result<DesiredKey, DesiredStateError> {
    let at = |message: String| DesiredStateError::at(text, value.span(), message);
    let key = value.get_ref();
    if key == AWS_OWNED {
        return Ok(DesiredKey::AwsOwned);
    }
    if key.starts_with(ALIAS_PREFIX) {
        return alias_name(key).map(DesiredKey::Alias).map_err(at);
    }
    if key.starts_with("arn:") && key.contains(":alias/") {
        return alias_arn(key, accounts, regions)
            .map(DesiredKey::Alias)
            .map_err(at);
    }
    KeyArn::parse(key).map(DesiredKey::Key).map_err(|e| {
        at(match e {
            KeyArnError::BareKeyId(_) => format!(
                "`kms_key` \"{}\" is a bare key id, which would name a different key in each account: give the key's ARN (arn:aws:kms:<region>:<account-id>:key/<key-id>)",
                shown(key)
            ),
            KeyArnError::Empty => format!("`kms_key` is empty: it must be {}", key_forms()),
            KeyArnError::Alias(_) | KeyArnError::Malformed(_) => format!(
                "`kms_key` \"{}\" is not {}",
                shown(key),
                key_forms()
            ),
        })
    })
}

/// `alias/<name>` when it can name a customer managed key.
fn alias_name(alias: &str) -> Result<String, String> {
    if alias.starts_with(AWS_MANAGED_ALIAS_PREFIX) {
        return Err(format!(
            "`kms_key` \"{}\" is the alias of an AWS managed key, which Inspector cannot use: give a customer managed key's alias or ARN, or \"{AWS_OWNED}\"",
            shown(alias)
        ));
    }
    let name = alias.strip_prefix(ALIAS_PREFIX).unwrap_or_default();
    let valid = (1..=ALIAS_NAME_MAX).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-'));
    if valid {
        Ok(alias.to_owned())
    } else {
        Err(format!(
            "`kms_key` \"{}\" is not an alias name: alias/ and 1 to {ALIAS_NAME_MAX} letters, digits, '/', '_' or '-'",
            shown(alias)
        ))
    }
}

/// The alias name of an alias ARN, accepted only in an entry of its own account and Region
/// alone: it names a key there and nowhere else.
fn alias_arn(arn: &str, accounts: &Names, regions: &Names) -> Result<String, String> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let ["arn", partition, "kms", region, account, alias] = parts.as_slice() else {
        return Err(format!(
            "`kms_key` \"{}\" is not {}",
            shown(arn),
            key_forms()
        ));
    };
    if !(is_partition(partition)
        && is_region_name(region)
        && partition_of(region) == *partition
        && is_account_id(account))
    {
        return Err(format!(
            "`kms_key` \"{}\" is not an alias ARN (arn:aws:kms:<region>:<account-id>:alias/<name>, the partition that of the Region)",
            shown(arn)
        ));
    }
    let name = alias_name(alias)?;
    if accounts.only() != Some(account) || regions.only() != Some(region) {
        return Err(format!(
            "`kms_key` \"{}\" is an alias ARN, which names a key in account {account} in {region} only, but the entry matches other accounts or Regions: give the alias name ({name}), which each account and Region resolves, or set accounts = [\"{account}\"] and regions = [\"{region}\"]",
            shown(arn)
        ));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    const LAMBDA: ResourceType = ResourceType::AwsLambdaFunction;
    const REPOSITORY: ResourceType = ResourceType::CodeRepository;
    const KEY_ARN: &str =
        "arn:aws:kms:eu-west-1:222233334444:key/1234abcd-12ab-34cd-56ef-1234567890ab";

    /// The issue's example.
    const EXAMPLE: &str = r#"[[key]]
accounts = ["*"]                        # account ids, or "*" for every managed account
regions = ["*"]                         # Regions, or "*" for each account's managed Regions
resource_type = "AWS_LAMBDA_FUNCTION"   # or "CODE_REPOSITORY"
kms_key = "alias/inspector-code"        # an alias resolved in each account and Region,
                                        # a key ARN, or "aws-owned"
"#;

    fn target(resource_type: ResourceType) -> Target {
        Target::new(SCAN_TYPE, resource_type).unwrap()
    }

    fn wanted(
        state: &DesiredState,
        account: &str,
        region: &str,
        resource_type: ResourceType,
    ) -> Option<(String, usize)> {
        state
            .wanted(Scope::of(account, region), target(resource_type))
            .map(|(key, line)| (key.to_string(), line))
    }

    fn refused(text: &str) -> DesiredStateError {
        match DesiredState::parse(text) {
            Ok(state) => panic!("accepted: {state:?}\n{text}"),
            Err(e) => e,
        }
    }

    fn entry(accounts: &str, regions: &str, resource_type: &str, kms_key: &str) -> String {
        format!(
            "[[key]]\naccounts = {accounts}\nregions = {regions}\nresource_type = \"{resource_type}\"\nkms_key = \"{kms_key}\"\n"
        )
    }

    #[test]
    fn the_issues_example_wants_the_alias_everywhere_for_lambda_only() {
        let state = DesiredState::parse(EXAMPLE).unwrap();
        assert_eq!(state.len(), 1);
        for (account, region) in [("111122223333", "us-east-1"), ("222233334444", "eu-west-1")] {
            assert_eq!(
                wanted(&state, account, region, LAMBDA),
                Some(("alias/inspector-code".to_owned(), 1))
            );
            assert_eq!(wanted(&state, account, region, REPOSITORY), None);
        }
        assert_eq!(
            state.wanted(Scope::of("111122223333", "us-east-1"), target(LAMBDA)),
            Some((&DesiredKey::Alias("alias/inspector-code".to_owned()), 1))
        );
        assert_eq!(state.named_accounts().count(), 0);
        assert_eq!(state.named_regions().count(), 0);
        // The editors' schema directive is a comment.
        let directed = format!("#:schema ./fleet.schema.json\n{EXAMPLE}");
        assert_eq!(
            wanted(
                &DesiredState::parse(&directed).unwrap(),
                "111122223333",
                "us-east-1",
                LAMBDA
            ),
            Some(("alias/inspector-code".to_owned(), 2))
        );
    }

    #[test]
    fn a_later_entry_overrides_earlier_ones_for_the_scopes_it_matches() {
        let text = [
            entry(
                r#"["*"]"#,
                r#"["*"]"#,
                "AWS_LAMBDA_FUNCTION",
                "alias/everyone",
            ),
            entry(
                r#"["222233334444"]"#,
                r#"["*"]"#,
                "AWS_LAMBDA_FUNCTION",
                KEY_ARN,
            ),
            entry(
                r#"["333344445555"]"#,
                r#"["eu-west-1"]"#,
                "CODE_REPOSITORY",
                "alias/repos",
            ),
            entry(
                r#"["*"]"#,
                r#"["ap-south-1"]"#,
                "CODE_REPOSITORY",
                "aws-owned",
            ),
        ]
        .concat();
        let state = DesiredState::parse(&text).unwrap();
        // The entries start on lines 1, 6, 11 and 16.
        let lambda = |account, region| wanted(&state, account, region, LAMBDA);
        let repository = |account, region| wanted(&state, account, region, REPOSITORY);
        assert_eq!(
            lambda("111122223333", "us-east-1"),
            Some(("alias/everyone".into(), 1))
        );
        assert_eq!(
            lambda("222233334444", "us-east-1"),
            Some((KEY_ARN.into(), 6))
        );
        assert_eq!(
            lambda("222233334444", "eu-west-1"),
            Some((KEY_ARN.into(), 6))
        );
        assert_eq!(
            lambda("333344445555", "eu-west-1"),
            Some(("alias/everyone".into(), 1))
        );
        assert_eq!(
            repository("333344445555", "eu-west-1"),
            Some(("alias/repos".into(), 11))
        );
        assert_eq!(repository("333344445555", "us-east-1"), None);
        // The specific entry loses to the later `*` for the scopes they share.
        assert_eq!(
            repository("333344445555", "ap-south-1"),
            Some(("aws-owned".into(), 16))
        );
        assert_eq!(
            repository("111122223333", "ap-south-1"),
            Some(("aws-owned".into(), 16))
        );
        assert_eq!(repository("111122223333", "us-east-1"), None);

        let named: Vec<_> = state.named_accounts().collect();
        assert_eq!(named, [("222233334444", 7), ("333344445555", 12)]);
        let named: Vec<_> = state.named_regions().collect();
        assert_eq!(named, [("eu-west-1", 13), ("ap-south-1", 18)]);
    }

    #[test]
    fn an_earlier_specific_entry_loses_to_a_later_star() {
        let text = [
            entry(
                r#"["222233334444"]"#,
                r#"["eu-west-1"]"#,
                "AWS_LAMBDA_FUNCTION",
                KEY_ARN,
            ),
            entry(r#"["*"]"#, r#"["*"]"#, "AWS_LAMBDA_FUNCTION", "aws-owned"),
        ]
        .concat();
        let state = DesiredState::parse(&text).unwrap();
        assert_eq!(
            state.wanted(Scope::of("222233334444", "eu-west-1"), target(LAMBDA)),
            Some((&DesiredKey::AwsOwned, 6))
        );
    }

    #[test]
    fn every_kind_of_key_is_read() {
        let cases = [
            ("aws-owned", DesiredKey::AwsOwned),
            (
                "alias/inspector/code_2-x",
                DesiredKey::Alias("alias/inspector/code_2-x".into()),
            ),
            (
                "alias/aws-not-managed",
                DesiredKey::Alias("alias/aws-not-managed".into()),
            ),
            (KEY_ARN, DesiredKey::Key(KeyArn::parse(KEY_ARN).unwrap())),
        ];
        for (kms_key, key) in cases {
            let text = entry(r#"["*"]"#, r#"["*"]"#, "CODE_REPOSITORY", kms_key);
            let state = DesiredState::parse(&text).unwrap();
            assert_eq!(
                state.wanted(Scope::of("111122223333", "us-east-1"), target(REPOSITORY)),
                Some((&key, 1)),
                "{kms_key}"
            );
        }
    }

    #[test]
    fn inline_tables_are_entries_too() {
        let text = "key = [\n  { accounts = [\"*\"], regions = [\"*\"], resource_type = \"CODE_REPOSITORY\", kms_key = \"alias/a\" },\n  { accounts = [\"222233334444\"], regions = [\"*\"], resource_type = \"CODE_REPOSITORY\", kms_key = \"aws-owned\" },\n]\n";
        let state = DesiredState::parse(text).unwrap();
        assert_eq!(
            wanted(&state, "111122223333", "us-east-1", REPOSITORY),
            Some(("alias/a".into(), 2))
        );
        assert_eq!(
            wanted(&state, "222233334444", "us-east-1", REPOSITORY),
            Some(("aws-owned".into(), 3))
        );
        assert_eq!(
            state.named_accounts().collect::<Vec<_>>(),
            [("222233334444", 3)]
        );
    }

    /// Thousands of accounts in one entry: each one's line is found once.
    #[test]
    fn a_long_list_of_accounts_is_read_and_matched() {
        let accounts: Vec<String> = (0..5000)
            .map(|i| format!("\"{:012}\"", 100_000_000_000_u64 + i))
            .collect();
        let text = entry(
            &format!("[\n{}\n]", accounts.join(",\n")),
            r#"["*"]"#,
            "AWS_LAMBDA_FUNCTION",
            "aws-owned",
        );
        let state = DesiredState::parse(&text).unwrap();
        assert_eq!(state.named_accounts().count(), 5000);
        assert_eq!(state.named_accounts().last(), Some(("100000004999", 5002)));
        assert_eq!(
            wanted(&state, "100000004999", "us-east-1", LAMBDA),
            Some(("aws-owned".into(), 1))
        );
        let duplicated = text.replace("\"100000004999\"", "\"100000000000\"");
        let e = refused(&duplicated);
        assert_eq!((e.line(), e.column()), (5002, 1), "{e}");
        assert!(e.message().contains("(first at line 3, column 1)"), "{e}");
    }

    #[test]
    fn an_alias_arn_is_its_alias_name_in_an_entry_of_its_own_scope_only() {
        let arn = "arn:aws:kms:eu-west-1:222233334444:alias/inspector-code";
        let text = entry(
            r#"["222233334444"]"#,
            r#"["eu-west-1"]"#,
            "AWS_LAMBDA_FUNCTION",
            arn,
        );
        let state = DesiredState::parse(&text).unwrap();
        assert_eq!(
            state.wanted(Scope::of("222233334444", "eu-west-1"), target(LAMBDA)),
            Some((&DesiredKey::Alias("alias/inspector-code".into()), 1))
        );
        for (accounts, regions) in [
            (r#"["*"]"#, r#"["eu-west-1"]"#),
            (r#"["222233334444"]"#, r#"["*"]"#),
            (r#"["222233334444", "333344445555"]"#, r#"["eu-west-1"]"#),
            (r#"["222233334444"]"#, r#"["eu-west-1", "us-east-1"]"#),
            (r#"["333344445555"]"#, r#"["eu-west-1"]"#),
            (r#"["222233334444"]"#, r#"["us-east-1"]"#),
        ] {
            let e = refused(&entry(accounts, regions, "AWS_LAMBDA_FUNCTION", arn));
            assert_eq!((e.line(), e.column()), (5, 11), "{accounts} {regions}: {e}");
            assert!(e.message().contains("alias ARN"), "{e}");
            assert!(e.message().contains("alias/inspector-code"), "{e}");
        }
    }

    #[test]
    fn a_very_long_unknown_key_is_named_shortened() {
        let long = "k".repeat(100_000);
        let file = format!(
            "{long} = 1\n{}",
            entry(r#"["*"]"#, r#"["*"]"#, "AWS_LAMBDA_FUNCTION", "alias/x")
        );
        let error = DesiredState::parse(&file).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("unknown field `kkkk"), "{message}");
        assert!(message.len() < 1_000, "{} bytes", message.len());
        assert_eq!((error.line(), error.column()), (1, 1));
    }

    /// Each refusal with the exact line and column of what is wrong and a part of the
    /// message.
    #[test]
    fn bad_files_are_refused_at_the_offending_value() {
        let star = r#"["*"]"#;
        let cases: Vec<(String, (usize, usize), &str)> = vec![
            // TOML syntax
            ("[[key]\n".into(), (1, 7), "invalid TOML"),
            (
                entry(star, star, "AWS_LAMBDA_FUNCTION", "alias/x").replace("kms_key = ", "kms_key "),
                (5, 9),
                "invalid TOML",
            ),
            // unknown keys
            (
                entry(star, star, "AWS_LAMBDA_FUNCTION", "alias/x").replace("kms_key", "kms_keys"),
                (5, 1),
                "unknown field `kms_keys`",
            ),
            (
                entry(star, star, "AWS_LAMBDA_FUNCTION", "alias/x").replace("[[key]]", "[[keys]]"),
                (1, 3),
                "unknown field `keys`",
            ),
            (
                format!("\"$schema\" = \"fleet.schema.json\"\n{}", entry(star, star, "AWS_LAMBDA_FUNCTION", "alias/x")),
                (1, 1),
                "unknown field `$schema`, expected `key`: the file holds [[key]] entries only",
            ),
            // missing fields
            (
                "\n[[key]]\naccounts = [\"*\"]\nregions = [\"*\"]\nresource_type = \"CODE_REPOSITORY\"\n".into(),
                (2, 1),
                "missing field `kms_key`",
            ),
            // types
            (entry("\"*\"", star, "AWS_LAMBDA_FUNCTION", "alias/x"), (2, 12), "`accounts` must be a list"),
            (entry("[111122223333]", star, "AWS_LAMBDA_FUNCTION", "alias/x"), (2, 13), "`accounts` must be a list"),
            ("key = 5\n".into(), (1, 7), "`key` must be [[key]] entries"),
            ("key = [5]\n".into(), (1, 8), "invalid type: integer `5`, expected a table"),
            // accounts
            (entry(r#"["11112222333"]"#, star, "AWS_LAMBDA_FUNCTION", "alias/x"), (2, 13), "\"11112222333\" is not an account id"),
            (entry(r#"["111122223333", "*"]"#, star, "AWS_LAMBDA_FUNCTION", "alias/x"), (2, 29), "`accounts` has \"*\" with other values"),
            (entry("[]", star, "AWS_LAMBDA_FUNCTION", "alias/x"), (2, 12), "`accounts` is empty"),
            (entry(r#"["111122223333", "222233334444", "111122223333"]"#, star, "AWS_LAMBDA_FUNCTION", "alias/x"), (2, 45), "lists \"111122223333\" twice (first at line 2, column 13)"),
            // regions
            (entry(star, r#"["us-east-1", "US-WEST-2"]"#, "AWS_LAMBDA_FUNCTION", "alias/x"), (3, 25), "\"US-WEST-2\" is not a Region name"),
            (entry(star, r#"["*", "us-east-1"]"#, "AWS_LAMBDA_FUNCTION", "alias/x"), (3, 12), "`regions` has \"*\" with other values"),
            (entry(star, "[]", "AWS_LAMBDA_FUNCTION", "alias/x"), (3, 11), "`regions` is empty"),
            (entry(star, r#"["us-east-1", "us-east-1"]"#, "AWS_LAMBDA_FUNCTION", "alias/x"), (3, 25), "lists \"us-east-1\" twice"),
            // resource_type
            (entry(star, star, "AWS_EC2_INSTANCE", "alias/x"), (4, 17), "customer managed keys for \"AWS_LAMBDA_FUNCTION\" or \"CODE_REPOSITORY\" only"),
            (entry(star, star, "LAMBDA", "alias/x"), (4, 17), "`resource_type` \"LAMBDA\" is not \"AWS_LAMBDA_FUNCTION\" or \"CODE_REPOSITORY\""),
            // kms_key
            (entry(star, star, "AWS_LAMBDA_FUNCTION", "alias/aws/inspector2"), (5, 11), "AWS managed key"),
            (entry(star, star, "AWS_LAMBDA_FUNCTION", "alias/"), (5, 11), "is not an alias name"),
            (entry(star, star, "AWS_LAMBDA_FUNCTION", "alias/a b"), (5, 11), "is not an alias name"),
            (entry(star, star, "AWS_LAMBDA_FUNCTION", &format!("alias/{}", "a".repeat(251))), (5, 11), "is not an alias name"),
            (entry(star, star, "AWS_LAMBDA_FUNCTION", "1234abcd-12ab-34cd-56ef-1234567890ab"), (5, 11), "bare key id"),
            (entry(star, star, "AWS_LAMBDA_FUNCTION", "mrk-1234abcd12ab34cd56ef1234567890ab"), (5, 11), "bare key id"),
            (entry(star, star, "AWS_LAMBDA_FUNCTION", "arn:aws:kms:us-east-1:111122223333:key/nope"), (5, 11), "is not \"aws-owned\", an alias name"),
            (entry(star, star, "AWS_LAMBDA_FUNCTION", "AWS-OWNED"), (5, 11), "is not \"aws-owned\""),
            (entry(star, star, "AWS_LAMBDA_FUNCTION", ""), (5, 11), "`kms_key` is empty"),
            (entry(r#"["111122223333"]"#, r#"["cn-north-1"]"#, "AWS_LAMBDA_FUNCTION", "arn:aws:kms:cn-north-1:111122223333:alias/x"), (5, 11), "is not an alias ARN"),
            // nothing desired
            ("".into(), (1, 1), "nothing desired"),
            ("# only a comment\n".into(), (1, 1), "nothing desired"),
            ("\n\nkey = []\n".into(), (3, 7), "nothing desired"),
        ];
        for (text, (line, column), message) in cases {
            let e = refused(&text);
            assert_eq!((e.line(), e.column()), (line, column), "{e}\n{text}");
            assert!(e.message().contains(message), "{e}\nwanted: {message}");
            assert_eq!(
                e.to_string(),
                format!("line {line}, column {column}: {}", e.message())
            );
        }
    }

    #[test]
    fn a_typo_in_a_key_is_refused_with_its_line() {
        let text = format!("{EXAMPLE}\n[[key]]\naccounts = [\"*\"]\nregion = [\"*\"]\n");
        let e = refused(&text);
        assert_eq!((e.line(), e.column()), (10, 1), "{e}");
        assert!(e.message().starts_with("unknown field `region`"), "{e}");
        assert!(e.message().contains("`regions`"), "{e}");
        assert!(e.message().ends_with("(in a [[key]] entry)"), "{e}");
    }

    #[test]
    fn crlf_files_read_as_lf_files_do() {
        let crlf = EXAMPLE.replace('\n', "\r\n");
        assert_eq!(DesiredState::parse(&crlf), DesiredState::parse(EXAMPLE));
        let bad = entry(
            r#"["*"]"#,
            r#"["eu-west-1", "eu-west-1"]"#,
            "CODE_REPOSITORY",
            "aws-owned",
        );
        let lf = refused(&bad);
        let crlf = refused(&bad.replace('\n', "\r\n"));
        assert_eq!((crlf.line(), crlf.column()), (lf.line(), lf.column()));
        assert_eq!((crlf.line(), crlf.column()), (3, 25));
    }

    #[test]
    fn an_error_renders_on_its_line_with_the_files_name() {
        let text = entry(r#"["*"]"#, r#"["*"]"#, "LAMBDA", "aws-owned");
        let e = refused(&text);
        let rendered = e.render(&text, "fleet.toml", false);
        assert!(rendered.contains(e.message()), "{rendered}");
        assert!(rendered.contains("fleet.toml:4:17"), "{rendered}");
        assert!(
            rendered.contains("resource_type = \"LAMBDA\""),
            "{rendered}"
        );
        assert!(rendered.contains("^^^^^^^^"), "{rendered}");
    }

    /// Deterministic mutations of a valid file: every truncation, and characters deleted,
    /// inserted and replaced at pseudo-random places; each is accepted or refused with a
    /// position inside the text, never a panic.
    #[test]
    fn mutated_files_are_accepted_or_refused_without_panicking() {
        let valid = [
            EXAMPLE.to_owned(),
            entry(
                r#"["111122223333", "222233334444"]"#,
                r#"["eu-west-1"]"#,
                "CODE_REPOSITORY",
                KEY_ARN,
            ),
            entry(
                r#"["222233334444"]"#,
                r#"["eu-west-1"]"#,
                "AWS_LAMBDA_FUNCTION",
                "arn:aws:kms:eu-west-1:222233334444:alias/inspector-code",
            ),
            "# la clé de l'équipe\n".to_owned(),
        ]
        .concat();
        assert!(DesiredState::parse(&valid).is_ok());
        let inserts = [
            "\"", "'", "[", "]", "[[", "=", "\n", "\r\n", "*", "#", "\\", "{", "}", ",", " ", "é",
            "\u{0}", "alias/", "arn:", "key", "1",
        ];
        let mut variants: Vec<String> = Vec::new();
        let boundaries: Vec<usize> = (0..=valid.len())
            .filter(|&i| valid.is_char_boundary(i))
            .collect();
        for &cut in boundaries.iter().step_by(3) {
            variants.push(valid[..cut].to_owned());
        }
        // A linear congruential generator: the same variants on every run.
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |bound: usize| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            usize::try_from(seed >> 33).unwrap() % bound
        };
        for _ in 0..400 {
            let mut text = valid.clone();
            for _ in 0..=next(3) {
                let at = boundaries[next(boundaries.len())].min(text.len());
                let at = floor_char_boundary(&text, at);
                match next(3) {
                    0 => {
                        let end = floor_char_boundary(&text, at + 1 + next(8));
                        text.replace_range(at..end.max(at), "");
                    }
                    1 => text.insert_str(at, inserts[next(inserts.len())]),
                    _ => {
                        let end = floor_char_boundary(&text, at + 1);
                        text.replace_range(at..end.max(at), inserts[next(inserts.len())]);
                    }
                }
            }
            variants.push(text);
        }
        // Deep nesting, which the TOML parser bounds.
        variants.push(format!("key = {}", "[".repeat(100_000)));
        variants.push(format!("key = {}{}", "[".repeat(1_000), "]".repeat(1_000)));
        variants.push(valid.replace(
            r#"["*"]"#,
            &format!("{}\"*\"{}", "[".repeat(500), "]".repeat(500)),
        ));
        variants.push(format!("{}=1", "a.".repeat(10_000)));
        assert!(variants.len() > 300, "{}", variants.len());
        let (mut accepted, mut refused) = (0, 0);
        for text in &variants {
            match DesiredState::parse(text) {
                Ok(state) => {
                    accepted += 1;
                    let _ = state.wanted(Scope::of("111122223333", "us-east-1"), target(LAMBDA));
                }
                Err(e) => {
                    refused += 1;
                    assert!(
                        e.line() >= 1 && e.line() <= text.lines().count() + 1,
                        "{e}\n{text:?}"
                    );
                    assert!(e.column() >= 1, "{e}");
                    assert!(e.span().end <= text.len(), "{e}");
                    let rendered = e.render(text, "fleet.toml", false);
                    assert!(rendered.contains("fleet.toml"), "{rendered}");
                }
            }
        }
        assert!(
            accepted > 0 && refused > 0,
            "accepted {accepted}, refused {refused}"
        );
    }

    /// The editors' schema (docs/fleet.schema.json) describes the same fields as the parser.
    #[test]
    fn the_schema_lists_exactly_the_fields_the_parser_reads() {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../../docs/fleet.schema.json")).unwrap();
        assert_eq!(
            schema["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        assert_eq!(schema["additionalProperties"], false);
        assert_eq!(schema["required"], serde_json::json!(["key"]));
        let top: Vec<&String> = schema["properties"].as_object().unwrap().keys().collect();
        assert_eq!(top, ["key"]);
        let entry = &schema["$defs"]["key"];
        assert_eq!(entry["additionalProperties"], false);
        let fields: Vec<&String> = entry["properties"].as_object().unwrap().keys().collect();
        assert_eq!(fields, ["accounts", "regions", "resource_type", "kms_key"]);
        assert_eq!(entry["required"], serde_json::json!(fields));
        let resource_types: Vec<&str> = SUPPORTED_TARGETS
            .iter()
            .filter(|(scan_type, _)| *scan_type == SCAN_TYPE)
            .map(|(_, resource_type)| resource_type.as_aws_str())
            .collect();
        assert_eq!(
            entry["properties"]["resource_type"]["enum"],
            serde_json::json!(resource_types)
        );
    }
}
