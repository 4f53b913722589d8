//! `policy access` and `policy diff`: the access summary of a key policy, and the access
//! one key policy adds to another, as text for people or JSON for pipelines.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::Args;
use serde::Serialize;

use super::{Format, TrustArgs, account_id_arg, diagnostics, emit, emit_json, read, usage_error};
use crate::{
    domain::{KeyArn, is_region_name, partition_of},
    verify::{
        Severity,
        access::{self, AccessDiff, AccessEntry, AccessSummary, Incomplete, Subject, Trust},
        policy::{self, Document, DocumentKind, Policy},
    },
};

/// The key whose access is summarized.
#[derive(Args)]
pub struct KeyArgs {
    /// The key's AWS Region.
    #[arg(long, value_parser = region_arg)]
    region: String,
    /// The key's 12-digit AWS account id: its principals are inside.
    #[arg(long, value_name = "ID", value_parser = account_id_arg)]
    account: String,
    /// The key's ARN, the requests' resource; default: a key of the account and Region
    /// (`arn:aws:kms:<region>:<account>:key/00000000-0000-0000-0000-000000000000`).
    #[arg(long, value_name = "ARN", value_parser = KeyArn::parse)]
    key_arn: Option<KeyArn>,
}

impl KeyArgs {
    /// The key's ARN, given or made from the account and Region.
    fn key_arn(&self) -> Result<String, ExitCode> {
        match &self.key_arn {
            Some(arn) => {
                let account = arn.account_id();
                if account == self.account {
                    Ok(arn.as_str().to_owned())
                } else {
                    Err(usage_error(format!(
                        "--key-arn `{arn}` is a key of account {account}, not of --account {}",
                        self.account
                    )))
                }
            }
            None => Ok(format!(
                "arn:{}:kms:{}:{}:key/00000000-0000-0000-0000-000000000000",
                partition_of(&self.region),
                self.region,
                self.account
            )),
        }
    }
}

/// `--region`: an AWS Region name.
fn region_arg(value: &str) -> Result<String, String> {
    if is_region_name(value) {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "`{value}` is not an AWS Region name (for example us-east-1)"
        ))
    }
}

#[derive(Args)]
pub struct AccessArgs {
    /// The key policy (JSON).
    #[arg(long, value_name = "FILE")]
    key_policy: PathBuf,
    /// An identity policy of --principal-arn (JSON); repeat for several.
    #[arg(
        long = "identity-policy",
        value_name = "FILE",
        requires = "principal_arn"
    )]
    identity_policies: Vec<PathBuf>,
    /// The permissions boundary of --principal-arn (JSON).
    #[arg(long, value_name = "FILE", requires = "principal_arn")]
    permissions_boundary: Option<PathBuf>,
    /// The IAM role or user whose identity policies and boundary are given; every other
    /// principal's are unknown.
    #[arg(long, value_name = "ARN")]
    principal_arn: Option<String>,
    #[command(flatten)]
    key: KeyArgs,
    #[command(flatten)]
    trust: TrustArgs,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Args)]
pub struct DiffArgs {
    /// The key policy as it is (JSON).
    #[arg(value_name = "OLD")]
    old: PathBuf,
    /// The key policy as it would be (JSON).
    #[arg(value_name = "NEW")]
    new: PathBuf,
    #[command(flatten)]
    key: KeyArgs,
    #[command(flatten)]
    trust: TrustArgs,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

/// Reads and parses the policy at `path` as `kind`, its locations named `name`. A policy
/// that cannot be read or has errors is an input error: its errors are printed to standard
/// error and the exit code is 2.
fn load(path: &PathBuf, kind: DocumentKind, name: &str) -> Result<Policy, ExitCode> {
    let text = read(path)?;
    let (policy, findings) = policy::analyze(Document {
        kind,
        name,
        text: &text,
    });
    let errors: Vec<_> = findings
        .into_iter()
        .filter(|f| f.severity == Severity::Error)
        .collect();
    match policy {
        Some(policy) if errors.is_empty() => Ok(policy),
        _ => {
            eprint!(
                "{}",
                diagnostics(&errors, &[(name.to_owned(), &text)], super::stderr_color())
            );
            let what = match kind {
                DocumentKind::KeyPolicy => "key policy",
                DocumentKind::IdentityPolicy => "identity policy",
            };
            Err(usage_error(format!(
                "`{}` ({name}) is not a usable {what}: {} error{}",
                path.display(),
                errors.len(),
                if errors.len() == 1 { "" } else { "s" }
            )))
        }
    }
}

/// `policy access`.
pub fn access_command(args: AccessArgs) -> Result<ExitCode, ExitCode> {
    let key = &args.key;
    if let Some(principal) = &args.principal_arn {
        crate::verify::render::check_params(&key.region, &key.account, principal)
            .map_err(|e| usage_error(format!("--principal-arn: {e}")))?;
    }
    let key_arn = key.key_arn()?;
    let key_policy = load(&args.key_policy, DocumentKind::KeyPolicy, "key_policy")?;
    let identity_policies = args
        .identity_policies
        .iter()
        .enumerate()
        .map(|(i, path)| {
            load(
                path,
                DocumentKind::IdentityPolicy,
                &format!("identity_policies[{i}]"),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let boundary = args
        .permissions_boundary
        .as_ref()
        .map(|path| load(path, DocumentKind::IdentityPolicy, "permissions_boundary"))
        .transpose()?;
    let trust = args.trust.trust(false);
    let summary = access::summarize(
        &key_policy,
        &Subject {
            account_id: &key.account,
            key_arn: &key_arn,
            principal_arn: args.principal_arn.as_deref(),
            identity_policies: (!identity_policies.is_empty())
                .then_some(identity_policies.as_slice()),
            boundary: boundary.as_ref(),
            trust,
        },
    );
    let (external, public) = (summary.external(), summary.public());
    match args.format {
        Format::Json => emit_json(&AccessJson {
            summary: &summary,
            external,
            public,
        }),
        Format::Text => emit(&summary_text(
            &summary,
            &key_arn,
            key,
            trust,
            super::stdout_color(),
        )),
    }
    Ok(if external || public || !summary.incomplete.is_empty() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `policy diff`.
pub fn diff_command(args: DiffArgs) -> Result<ExitCode, ExitCode> {
    let key = &args.key;
    let key_arn = key.key_arn()?;
    let old = load(&args.old, DocumentKind::KeyPolicy, "old")?;
    let new = load(&args.new, DocumentKind::KeyPolicy, "new")?;
    let diff = access::diff(
        &old,
        &new,
        &Subject {
            account_id: &key.account,
            key_arn: &key_arn,
            principal_arn: None,
            identity_policies: None,
            boundary: None,
            trust: args.trust.trust(false),
        },
    );
    match args.format {
        Format::Json => emit_json(&diff),
        Format::Text => emit(&diff_text(
            &diff,
            &args.old,
            &args.new,
            super::stdout_color(),
        )),
    }
    Ok(
        if diff.new_access.is_empty() && diff.incomplete.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        },
    )
}

/// `policy access --format json`: the summary, and whether any entry is external or public.
#[derive(Serialize)]
struct AccessJson<'a> {
    #[serde(flatten)]
    summary: &'a AccessSummary,
    external: bool,
    public: bool,
}

/// ANSI styles, or none when not on a terminal.
#[derive(Clone, Copy)]
struct Paint(bool);

impl Paint {
    fn style(self, code: &str, text: &str) -> String {
        if self.0 {
            format!("\u{1b}[{code}m{text}\u{1b}[0m")
        } else {
            text.to_owned()
        }
    }

    fn heading(self, text: &str) -> String {
        self.style("1", text)
    }

    fn external(self) -> String {
        self.style("1;33", "[external]")
    }

    fn public(self) -> String {
        self.style("1;31", "[public]")
    }

    fn dim(self, text: &str) -> String {
        self.style("2", text)
    }
}

/// `Sid "X" (key_policy.Statement[1], line 13)`, or `no Sid (…)`.
fn statement_name(sid: Option<&str>, location: &crate::verify::Location) -> String {
    let place = format!("({}, line {})", location.path, location.line);
    match sid {
        Some(sid) => format!("Sid \"{sid}\" {place}"),
        None => format!("no Sid {place}"),
    }
}

/// One entry on one line (grantee, `actions`, conditions, statement, flags), and its
/// witness on the next.
fn entry_text(out: &mut String, entry: &AccessEntry, actions: &[&str], paint: Paint) {
    let conditions = if entry.conditions.is_empty() {
        "unconditionally".to_owned()
    } else {
        format!("if {}", entry.conditions.join("; "))
    };
    let mut flags = String::new();
    if entry.external {
        flags.push(' ');
        flags.push_str(&paint.external());
    }
    if entry.public {
        flags.push(' ');
        flags.push_str(&paint.public());
    }
    let except = if entry.except_denied_by.is_empty() {
        String::new()
    } else {
        format!(
            ", except as denied by {}",
            entry
                .except_denied_by
                .iter()
                .map(|sid| format!("\"{sid}\""))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let _ = writeln!(
        out,
        "  {}: {}, {conditions}{except}; {}{flags}",
        entry.grantee.describe(),
        actions.join(", "),
        statement_name(entry.sid.as_deref(), &entry.location),
    );
    let _ = writeln!(
        out,
        "      {} {}",
        paint.dim("witness:"),
        entry.witness.describe()
    );
}

/// The entries under one heading, each with the actions of `kind` it allows.
fn group_text(
    out: &mut String,
    heading: &str,
    entries: &[AccessEntry],
    kind: &[&str],
    paint: Paint,
) {
    let _ = writeln!(out, "{}", paint.heading(heading));
    let mut any = false;
    for entry in entries {
        let actions: Vec<&str> = entry
            .actions
            .iter()
            .map(String::as_str)
            .filter(|a| kind.contains(a))
            .collect();
        if !actions.is_empty() {
            entry_text(out, entry, &actions, paint);
            any = true;
        }
    }
    if !any {
        let _ = writeln!(out, "  (none)");
    }
}

/// Every entry under one heading, with all its actions.
fn list_text(out: &mut String, heading: &str, entries: &[AccessEntry], paint: Paint) {
    let _ = writeln!(out, "{}", paint.heading(heading));
    for entry in entries {
        let actions: Vec<&str> = entry.actions.iter().map(String::as_str).collect();
        entry_text(out, entry, &actions, paint);
    }
    if entries.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
}

/// The statements not analysed, when there are any.
fn incomplete_text(out: &mut String, incomplete: &[Incomplete], paint: Paint) {
    if incomplete.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n{}",
        paint.heading("Not analysed (ANALYSIS_INCOMPLETE)")
    );
    for gap in incomplete {
        let _ = writeln!(
            out,
            "  {}: {}",
            statement_name(gap.sid.as_deref(), &gap.location),
            gap.reason
        );
    }
}

/// `policy access` as text: who reads the code, who breaks scanning, the statements not
/// analysed, then a verdict line.
fn summary_text(
    summary: &AccessSummary,
    key_arn: &str,
    key: &KeyArgs,
    trust: Trust<'_>,
    paint: bool,
) -> String {
    let paint = Paint(paint);
    let mut inside = vec![format!("account {}", key.account)];
    inside.extend(
        trust
            .trusted_accounts
            .iter()
            .map(|a| format!("trusted account {a}")),
    );
    inside.extend(trust.organization_id.map(|o| format!("organization {o}")));
    let mut out = format!("Access to {key_arn} (inside: {})\n\n", inside.join(", "));
    group_text(
        &mut out,
        "Reads the code",
        &summary.entries,
        &access::READS_CODE,
        paint,
    );
    out.push('\n');
    group_text(
        &mut out,
        "Breaks scanning",
        &summary.entries,
        &access::BREAKS_SCANNING,
        paint,
    );
    incomplete_text(&mut out, &summary.incomplete, paint);
    let count = |f: fn(&AccessEntry) -> bool| summary.entries.iter().filter(|e| f(e)).count();
    let (external, public) = (count(|e| e.external), count(|e| e.public));
    let verdict = if public > 0 {
        paint.style("1;31", "PUBLIC ACCESS")
    } else if external > 0 {
        paint.style("1;33", "EXTERNAL ACCESS")
    } else if !summary.incomplete.is_empty() {
        "INCOMPLETE".to_owned()
    } else {
        "no external or public access".to_owned()
    };
    let _ = writeln!(
        out,
        "\n{verdict}: {} entr{}, {external} external, {public} public, {} statement{} not analysed",
        summary.entries.len(),
        if summary.entries.len() == 1 {
            "y"
        } else {
            "ies"
        },
        summary.incomplete.len(),
        if summary.incomplete.len() == 1 {
            ""
        } else {
            "s"
        },
    );
    out
}

/// `policy diff` as text: the new access, the removed access, the statements not analysed,
/// then a verdict line.
fn diff_text(diff: &AccessDiff, old: &Path, new: &Path, paint: bool) -> String {
    let paint = Paint(paint);
    let (old, new) = (old.display(), new.display());
    let mut out = String::new();
    list_text(
        &mut out,
        &format!("New access (allowed by {new}, not by {old})"),
        &diff.new_access,
        paint,
    );
    out.push('\n');
    list_text(
        &mut out,
        &format!("Removed access (allowed by {old}, not by {new})"),
        &diff.removed_access,
        paint,
    );
    incomplete_text(&mut out, &diff.incomplete, paint);
    let verdict = if !diff.new_access.is_empty() {
        paint.style("1;33", "NEW ACCESS")
    } else if !diff.incomplete.is_empty() {
        "INCOMPLETE".to_owned()
    } else {
        "no new access".to_owned()
    };
    let _ = writeln!(
        out,
        "\n{verdict}: {} new, {} removed, {} statement{} not analysed",
        diff.new_access.len(),
        diff.removed_access.len(),
        diff.incomplete.len(),
        if diff.incomplete.len() == 1 { "" } else { "s" },
    );
    out
}
