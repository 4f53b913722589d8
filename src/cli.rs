//! The command line: `serve`, and the verification library offline (`policy verify`,
//! `policy render`, and `policy access` and `policy diff` in [`access`]) for CI pipelines
//! and people.

mod access;
mod fleet;

pub use fleet::{FleetCommand, fleet};

use std::{fmt::Write as _, io::IsTerminal as _, path::PathBuf, process::ExitCode};

use annotate_snippets::{AnnotationKind, Group, Level, Renderer, Snippet};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    authz::Rules,
    config::Settings,
    domain::{is_account_id, is_organization_id},
    verify::{self, Finding, Profile, Report, Severity},
};

#[derive(Parser)]
#[command(
    name = "inspector-keyd",
    version,
    about = "gRPC sidecar for Amazon Inspector's customer managed encryption key"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve the gRPC API. With no config: local backend, state in ./state, a Unix socket
    /// at ./state/keyd.sock and loopback TCP on 127.0.0.1:50051.
    Serve {
        /// TOML configuration file; `INSPECTOR_KEYD_*` variables override it.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Log format: `text` (for people) or `json` (one object per line); overrides
        /// `ops.log_format`.
        #[arg(long, value_name = "FORMAT", value_parser = ["text", "json"])]
        log_format: Option<String>,
        /// Once every listener serves, write their addresses here as JSON (`unix_socket`,
        /// `tcp`, `tls`, `metrics`, `health`, `aws_api`; `null` when off), for scripts that start
        /// the sidecar; removed at shutdown.
        #[arg(long, value_name = "FILE")]
        ready_file: Option<PathBuf>,
    },
    /// Verify, render, summarize or compare key policies offline.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Check configuration without starting the server.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The organization's keys through a running sidecar: the inventory.
    #[command(subcommand)]
    Fleet(FleetCommand),
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Validate a config file as `serve` would read it (with the `INSPECTOR_KEYD_*`
    /// overrides of the environment), and the files it names that exist here: the rules
    /// file, identity policies, TLS certificates and keys. Exit 0: valid; 1: invalid.
    Check(ConfigCheckArgs),
}

#[derive(Args)]
pub struct ConfigCheckArgs {
    /// The TOML configuration file.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Check this file as the rules file, in place of `authz.rules_file` (whose path may
    /// exist only where the server runs, such as inside a container).
    #[arg(long, value_name = "FILE")]
    rules_file: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Verify a key policy (and the principal's identity policies) for a profile. Exit 0:
    /// passed; 1: a finding of severity ERROR (a malformed policy is a finding); 2: usage
    /// error or unreadable file.
    Verify(VerifyArgs),
    /// Print the policy a profile needs, merged into an existing one when given.
    Render(RenderArgs),
    /// Who can read the code and who can break scanning, with a request that shows each.
    /// Exit 0: no access from outside the account (its trusted accounts and organization);
    /// 1: external or public access, or a statement not analysed; 2: usage error, or a
    /// policy that cannot be read or has errors.
    Access(access::AccessArgs),
    /// The access a new key policy allows that the old did not, and the access it removes.
    /// Exit 0: no new access; 1: new access, or a statement not analysed; 2: usage error,
    /// or a policy that cannot be read or has errors.
    Diff(access::DiffArgs),
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ProfileArg {
    CodeguruGrants,
    AmazonQLambda,
    AmazonQCodeRepository,
}

impl From<ProfileArg> for Profile {
    fn from(arg: ProfileArg) -> Profile {
        match arg {
            ProfileArg::CodeguruGrants => Profile::CodeguruGrants,
            ProfileArg::AmazonQLambda => Profile::AmazonQLambda,
            ProfileArg::AmazonQCodeRepository => Profile::AmazonQCodeRepository,
        }
    }
}

#[derive(Clone, Copy, ValueEnum, Default)]
pub enum Format {
    #[default]
    Text,
    Json,
}

/// What both `verify` and `render` need.
#[derive(Args)]
pub struct Target {
    /// Verification profile.
    #[arg(long, value_enum)]
    profile: ProfileArg,
    /// AWS Region where Inspector scans.
    #[arg(long)]
    region: String,
    /// 12-digit AWS account id.
    #[arg(long)]
    account: String,
    /// ARN of the IAM principal that calls Inspector.
    #[arg(long, value_name = "ARN")]
    principal_arn: String,
}

/// Which accounts and organization are inside, besides the key's account.
#[derive(Args)]
pub struct TrustArgs {
    /// An account whose access is not external (12-digit id); repeat for several.
    #[arg(long = "trusted-account", value_name = "ID", value_parser = account_id_arg)]
    trusted_accounts: Vec<String>,
    /// The AWS Organizations id whose principals' access is not external (`o-…`).
    #[arg(long, value_name = "ID", value_parser = organization_id_arg)]
    organization_id: Option<String>,
}

impl TrustArgs {
    fn trust(&self, deny_external_access: bool) -> verify::access::Trust<'_> {
        verify::access::Trust {
            trusted_accounts: &self.trusted_accounts,
            organization_id: self.organization_id.as_deref(),
            deny_external_access,
        }
    }
}

/// `--trusted-account`, `--account`: a 12-digit account id.
fn account_id_arg(value: &str) -> Result<String, String> {
    if is_account_id(value) {
        Ok(value.to_owned())
    } else {
        Err(format!("`{value}` is not a 12-digit AWS account id"))
    }
}

/// `--organization-id`: an AWS Organizations id.
fn organization_id_arg(value: &str) -> Result<String, String> {
    if is_organization_id(value) {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "`{value}` is not an AWS Organizations id (`o-` and 10 to 32 lowercase letters or digits, such as o-a1b2c3d4e5)"
        ))
    }
}

#[derive(Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    trust: TrustArgs,
    /// Report access from outside the account (EXTERNAL_ACCESS) as an error, not a
    /// security warning.
    #[arg(long)]
    deny_external_access: bool,
    /// The key policy (JSON).
    #[arg(long, value_name = "FILE")]
    key_policy: PathBuf,
    /// An identity policy of the principal (JSON); repeat for several.
    #[arg(long = "identity-policy", value_name = "FILE")]
    identity_policies: Vec<PathBuf>,
    /// The principal's permissions boundary policy (JSON): it caps what the identity
    /// policies, and key-policy statements naming a role, allow.
    #[arg(long, value_name = "FILE")]
    permissions_boundary: Option<PathBuf>,
    /// `aws kms describe-key` output; without it the key rules are not checked.
    #[arg(long, value_name = "FILE")]
    key_metadata: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Args)]
pub struct RenderArgs {
    #[command(flatten)]
    target: Target,
    /// A policy to merge the statements into (same Sid replaced, others kept).
    #[arg(long, value_name = "FILE")]
    merge_into: Option<PathBuf>,
}

/// `config check`: the configuration, then each named file present here.
pub fn config_check(args: ConfigCheckArgs) -> ExitCode {
    match check_config(&args) {
        Ok(notes) => {
            for note in notes {
                println!("note: {note}");
            }
            println!("config `{}` is valid", args.file.display());
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("inspector-keyd: {message}");
            ExitCode::from(1)
        }
    }
}

/// The notes (files not present here) when valid, else what is wrong.
fn check_config(args: &ConfigCheckArgs) -> Result<Vec<String>, String> {
    let settings = Settings::load(Some(&args.file), std::env::vars()).map_err(|e| e.to_string())?;
    let config = &settings.config;
    let mut notes = Vec::new();
    let mut present_here = |path: &std::path::Path, key: &str| {
        let present = path.exists();
        if !present {
            notes.push(format!(
                "`{}` ({key}) does not exist here, so it was not checked; the server reads it at start",
                path.display()
            ));
        }
        present
    };
    let rules_file = args
        .rules_file
        .as_ref()
        .or(config.authz.rules_file.as_ref());
    if let Some(path) = rules_file
        && (args.rules_file.is_some() || present_here(path, "authz.rules_file"))
    {
        Rules::from_file(path, settings.loopback_anonymous_role).map_err(|e| e.to_string())?;
    }
    let policy_files = config
        .verification
        .identity_policy_files
        .iter()
        .map(|path| {
            (
                path,
                "verification.identity_policy_files",
                "identity policy",
            )
        })
        .chain(
            config
                .verification
                .permissions_boundary_file
                .iter()
                .map(|path| {
                    (
                        path,
                        "verification.permissions_boundary_file",
                        "permissions boundary",
                    )
                }),
        );
    for (path, key, what) in policy_files {
        if present_here(path, key) {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {what} `{}`: {e}", path.display()))?;
            verify::json::parse_unique(&text)
                .map_err(|e| format!("{what} `{}`: {e}", path.display()))?;
        }
    }
    if let Some(path) = &config.fleet.desired_state_file
        && present_here(path, "fleet.desired_state_file")
    {
        crate::service::read_desired_state(path)
            .map_err(|e| format!("fleet.desired_state_file: {e}"))?;
    }
    if let Some((_, files)) = &settings.listeners.tls {
        let paths = [
            (&files.cert_file, "tls.cert_file"),
            (&files.key_file, "tls.key_file"),
        ]
        .into_iter()
        .chain(
            files
                .client_ca_files
                .iter()
                .map(|f| (f, "tls.client_ca_files")),
        );
        let mut all_present = true;
        for (path, key) in paths {
            all_present &= present_here(path, key);
        }
        if all_present {
            crate::tls::server_config(files).map_err(|e| e.to_string())?;
        }
    }
    Ok(notes)
}

/// Writes `text` to standard output. A reader that went away (`| head`) is no reason to
/// panic, so a failed write is ignored.
fn emit(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// Writes `value` as pretty JSON and a newline to standard output.
fn emit_json(value: &impl serde::Serialize) {
    emit(&format!(
        "{}\n",
        serde_json::to_string_pretty(value).unwrap_or_default()
    ));
}

/// A usage or input problem: exit code 2.
fn usage_error(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("inspector-keyd: {message}");
    ExitCode::from(2)
}

fn read(path: &PathBuf) -> Result<String, ExitCode> {
    std::fs::read_to_string(path)
        .map_err(|e| usage_error(format!("cannot read `{}`: {e}", path.display())))
}

pub fn policy(command: PolicyCommand) -> ExitCode {
    match command {
        PolicyCommand::Verify(args) => verify_command(args).unwrap_or_else(|code| code),
        PolicyCommand::Render(args) => render_command(args).unwrap_or_else(|code| code),
        PolicyCommand::Access(args) => access::access_command(args).unwrap_or_else(|code| code),
        PolicyCommand::Diff(args) => access::diff_command(args).unwrap_or_else(|code| code),
    }
}

fn verify_command(args: VerifyArgs) -> Result<ExitCode, ExitCode> {
    let t = &args.target;
    verify::render::check_params(&t.region, &t.account, &t.principal_arn).map_err(usage_error)?;
    let key_policy = read(&args.key_policy)?;
    let identity_policies = args
        .identity_policies
        .iter()
        .map(read)
        .collect::<Result<Vec<_>, _>>()?;
    let permissions_boundary = args.permissions_boundary.as_ref().map(read).transpose()?;
    let metadata = match &args.key_metadata {
        Some(path) => Some(
            verify::parse_describe_key(&read(path)?)
                .map_err(|e| usage_error(format!("`{}` is {e}", path.display())))?,
        ),
        None => None,
    };
    let report = verify::verify(&verify::Input {
        profile: t.profile.into(),
        region: &t.region,
        account_id: &t.account,
        principal_arn: &t.principal_arn,
        key_metadata: metadata.as_ref(),
        key_policy: &key_policy,
        identity_policies: &identity_policies,
        identity_policies_complete: false,
        permissions_boundary: permissions_boundary.as_deref(),
        trust: args.trust.trust(args.deny_external_access),
    });
    match args.format {
        Format::Json => emit_json(&report),
        Format::Text => {
            let mut sources = vec![("key_policy".to_owned(), key_policy.as_str())];
            sources.extend(
                identity_policies
                    .iter()
                    .enumerate()
                    .map(|(i, text)| (format!("identity_policies[{i}]"), text.as_str())),
            );
            if let Some(boundary) = &permissions_boundary {
                sources.push(("permissions_boundary".to_owned(), boundary.as_str()));
            }
            emit(&text_report(&report, &sources, stdout_color()));
        }
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn render_command(args: RenderArgs) -> Result<ExitCode, ExitCode> {
    let t = &args.target;
    let existing = args.merge_into.as_ref().map(read).transpose()?;
    let policy = verify::render(
        t.profile.into(),
        &t.region,
        &t.account,
        &t.principal_arn,
        existing.as_deref(),
    )
    .map_err(usage_error)?;
    emit(&format!("{policy}\n"));
    Ok(ExitCode::SUCCESS)
}

/// Colour on standard output: only on a terminal, and never with NO_COLOR set.
fn stdout_color() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Colour on standard error: only on a terminal, and never with NO_COLOR set.
fn stderr_color() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// The label and level of a severity in the text report.
fn severity_level(severity: Severity) -> Level<'static> {
    match severity {
        Severity::Error => Level::ERROR,
        Severity::SecurityWarning => Level::WARNING.with_name(Some("security warning")),
        Severity::Warning => Level::WARNING,
        Severity::Suggestion => Level::HELP.with_name(Some("suggestion")),
    }
}

/// The byte range of the value or member name that starts at `offset` in `text`: a string
/// with its quotes, a number or literal, or else the one character there.
fn span_at(text: &str, offset: usize) -> std::ops::Range<usize> {
    let rest = text.get(offset..).unwrap_or_default();
    let length = if rest.starts_with('"') {
        let mut escaped = false;
        rest.char_indices()
            .skip(1)
            .find(|&(_, c)| {
                let end = c == '"' && !escaped;
                escaped = c == '\\' && !escaped;
                end
            })
            .map_or(rest.len(), |(i, _)| i + 1)
    } else {
        rest.find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '+' | '.')))
            .unwrap_or(rest.len())
            .max(rest.chars().next().map_or(0, char::len_utf8))
    };
    offset..(offset + length).min(text.len())
}

/// The byte offset of a 1-based line and column (in characters).
fn offset_of(text: &str, line: u32, column: u32) -> Option<usize> {
    let start = if line <= 1 {
        0
    } else {
        text.match_indices('\n')
            .nth(usize::try_from(line).ok()? - 2)
            .map(|(i, _)| i + 1)?
    };
    let column = usize::try_from(column).ok()?.saturating_sub(1);
    let line_text = text.get(start..)?;
    Some(
        start
            + line_text
                .char_indices()
                .nth(column)
                .map_or(line_text.len(), |(i, _)| i),
    )
}

/// The policy documents a report's locations point into, by name (`key_policy`,
/// `identity_policies[0]`).
pub type Sources<'a> = [(String, &'a str)];

/// Each finding as a diagnostic (severity, code and message; the offending line of the
/// policy with a caret under the value; the requests it affects; the fix), then a summary
/// line. `color`: ANSI colours, for a terminal.
pub fn text_report(report: &Report, sources: &Sources<'_>, color: bool) -> String {
    let mut out = diagnostics(&report.findings, sources, color);
    let counts: Vec<String> = [
        (Severity::Error, "error"),
        (Severity::SecurityWarning, "security warning"),
        (Severity::Warning, "warning"),
        (Severity::Suggestion, "suggestion"),
    ]
    .iter()
    .map(|&(severity, noun)| {
        let n = report
            .findings
            .iter()
            .filter(|f| f.severity == severity)
            .count();
        format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
    })
    .collect();
    let _ = writeln!(
        out,
        "{} (profile {}): {}",
        if report.passed { "PASSED" } else { "FAILED" },
        report.profile,
        counts.join(", ")
    );
    out
}

/// Each finding as a diagnostic: severity, code and message; the offending line of the
/// policy with a caret under the value; the requests it affects; the fix.
fn diagnostics(findings: &[Finding], sources: &Sources<'_>, color: bool) -> String {
    let renderer = if color {
        Renderer::styled()
    } else {
        Renderer::plain()
    };
    let mut out = String::new();
    for f in findings {
        let mut group = Group::with_title(
            severity_level(f.severity)
                .primary_title(f.message.as_str())
                .id(f.code.as_str()),
        );
        let mut located = false;
        if let Some(location) = &f.location {
            let document = sources.iter().find(|(name, _)| {
                location
                    .path
                    .strip_prefix(name.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
            });
            if let Some((name, text)) = document
                && let Some(offset) = offset_of(text, location.line, location.column)
            {
                let element = location.path[name.len()..].trim_start_matches('.');
                let annotation = AnnotationKind::Primary.span(span_at(text, offset));
                group = group.element(Snippet::source(*text).path(name.as_str()).annotation(
                    if element.is_empty() {
                        annotation
                    } else {
                        annotation.label(element)
                    },
                ));
                located = true;
            }
            if !located {
                group = group.element(Level::NOTE.message(format!(
                    "at {} (line {}, column {})",
                    location.path, location.line, location.column
                )));
            }
        }
        if let Some(sid) = &f.sid
            && !located
        {
            group = group.element(Level::NOTE.message(format!("statement Sid \"{sid}\"")));
        }
        if !f.requests.is_empty() {
            let mut listed = String::from("requests:");
            for request in &f.requests {
                let _ = write!(listed, "\n- {request}");
            }
            group = group.element(Level::NOTE.message(listed));
        }
        if let Some(fix) = &f.fix {
            group = group.element(Level::HELP.message(format!("fix: {fix}")));
        }
        let _ = writeln!(out, "{}\n", renderer.render(&[group]));
    }
    out
}
