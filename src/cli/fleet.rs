//! `inspector-keyd fleet`: the organization's keys as a whole, through a running sidecar
//! (over its Unix socket, where the sidecar's own user is admin under the default rules).
//! `fleet status` prints the inventory; `fleet plan FILE` and `fleet apply FILE` bring the
//! managed scopes to a desired state (docs/fleet.md), planned and applied in the sidecar
//! (one verification gate, cache and audit trail), this command their client.

use std::{
    io::IsTerminal as _,
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{Args, Subcommand, ValueEnum};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tonic::transport::{Channel, Endpoint, Uri};

use super::{emit, emit_json};
use crate::{
    fleet::desired::DesiredState,
    proto::{self, encryption_key_service_client::EncryptionKeyServiceClient},
};

#[derive(Subcommand)]
pub enum FleetCommand {
    /// The key in use in every managed account and Region, with its verification (the
    /// inventory). Exit 0: every scope read; 1: a scope could not be read, or the call
    /// failed.
    Status(StatusArgs),
    /// What bringing the managed scopes to the desired state in FILE would change. Exit 0:
    /// nothing would change; 2: changes are pending; 1: an error (a scope that cannot be
    /// brought to it, or the call failed), as `terraform plan -detailed-exitcode`.
    Plan(PlanArgs),
    /// Apply the desired state in FILE: shows the plan, asks on a terminal (`--yes` for
    /// CI), applies it, and ends with a summary. Exit 0: every scope is in the desired
    /// state; 1: something failed, named on standard error.
    Apply(ApplyArgs),
}

#[derive(Args)]
pub struct PlanArgs {
    /// The desired-state file (TOML; docs/fleet.md).
    file: PathBuf,
    #[command(flatten)]
    sidecar: SidecarArgs,
    /// `table` (for people) or `json`.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    plan: PlanArgs,
    /// Apply without asking (needed when standard input is not a terminal).
    #[arg(long)]
    yes: bool,
}

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    sidecar: SidecarArgs,
    /// `table` (for people) or `json`.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Only this account (repeatable; default every managed account you may read).
    #[arg(long = "account", value_name = "ACCOUNT_ID")]
    accounts: Vec<String>,
    /// Only this Region (repeatable).
    #[arg(long = "region", value_name = "REGION")]
    regions: Vec<String>,
}

/// Which sidecar to ask.
#[derive(Args)]
pub struct SidecarArgs {
    /// The sidecar's Unix socket. Default: the one `serve` makes without a configuration.
    #[arg(long, value_name = "PATH", default_value = "state/keyd.sock")]
    socket: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

pub fn fleet(command: FleetCommand) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return failed(format!("cannot start the client: {error}")),
    };
    match command {
        FleetCommand::Status(args) => runtime.block_on(status(args)),
        FleetCommand::Plan(args) => runtime.block_on(plan(args)),
        FleetCommand::Apply(args) => runtime.block_on(apply(args)),
    }
}

/// A failure of the command: exit code 1.
fn failed(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("inspector-keyd: {message}");
    ExitCode::FAILURE
}

/// A gRPC error as a person reads it.
fn call_failed(status: &tonic::Status) -> ExitCode {
    failed(format!("{:?}: {}", status.code(), status.message()))
}

/// A channel to the sidecar's Unix socket (connected on first use).
async fn connect(socket: &Path) -> Result<Channel, String> {
    let path = socket.to_owned();
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .map_err(|error| {
            format!(
                "cannot reach the sidecar at `{}` ({error}); is `inspector-keyd serve` running? --socket names its socket",
                socket.display()
            )
        })
}

/// A progress line on standard error, on a terminal only.
struct Progress {
    shown: bool,
}

impl Progress {
    fn new(wanted: bool) -> Progress {
        Progress {
            shown: wanted && std::io::stderr().is_terminal(),
        }
    }

    fn show(&self, what: &str, done: u32, total: u32) {
        if self.shown {
            let width = 30usize;
            let filled = if total == 0 {
                width
            } else {
                (done as usize * width) / total as usize
            };
            eprint!(
                "\r{what} [{}{}] {done}/{total} scopes",
                "#".repeat(filled.min(width)),
                " ".repeat(width - filled.min(width))
            );
        }
    }

    fn clear(&self) {
        if self.shown {
            eprint!("\r\x1b[2K");
        }
    }
}

async fn status(args: StatusArgs) -> ExitCode {
    let mut client = match connect(&args.sidecar.socket).await {
        Ok(channel) => EncryptionKeyServiceClient::new(channel),
        Err(message) => return failed(message),
    };
    let request = proto::ListEncryptionKeysRequest {
        account_ids: args.accounts,
        regions: args.regions,
    };
    let mut stream = match client.list_encryption_keys(request).await {
        Ok(answer) => answer.into_inner(),
        Err(status) => return call_failed(&status),
    };
    let progress = Progress::new(args.format == Format::Table);
    let mut entries = Vec::new();
    let (mut done, mut scopes) = (0, None);
    loop {
        match stream.message().await {
            Ok(Some(message)) => {
                progress.show("gathering", message.scopes_done, message.scopes_total);
                (done, scopes) = (message.scopes_done, Some(message.scopes_total));
                entries.extend(message.entries);
            }
            Ok(None) => break,
            Err(status) => {
                progress.clear();
                return call_failed(&status);
            }
        }
    }
    progress.clear();
    let Some(scopes) = scopes.filter(|&total| total == done) else {
        return failed(format!(
            "the sidecar's answer ended after {done} scope(s) of {}: the inventory is incomplete",
            scopes.map_or_else(|| "?".to_owned(), |total| total.to_string())
        ));
    };
    let errors = entries.iter().filter(|e| !e.error.is_empty()).count();
    match args.format {
        Format::Table => emit(&inventory_table(&entries)),
        Format::Json => emit_json(&json!({
            "keys": entries.iter().map(entry_json).collect::<Vec<_>>(),
            "summary": summary(scopes, &entries),
        })),
    }
    if errors > 0 {
        return failed(format!(
            "{errors} target(s) could not be read; their error is in the inventory"
        ));
    }
    ExitCode::SUCCESS
}

/// The resource type's AWS name (`AWS_LAMBDA_FUNCTION`).
fn resource_type_name(value: i32) -> String {
    proto::ResourceType::try_from(value)
        .map(|r| {
            r.as_str_name()
                .trim_start_matches("RESOURCE_TYPE_")
                .to_owned()
        })
        .unwrap_or_else(|_| value.to_string())
}

/// What verification says of an entry's key, in a word or two.
fn verification_word(entry: &proto::KeyInventoryEntry) -> String {
    if !entry.error.is_empty() {
        return "error".into();
    }
    match &entry.report {
        None if entry.kms_key_id.is_empty() => "-".into(),
        None => "not verified yet".into(),
        Some(report) if report.passed => "passed".into(),
        Some(report) => {
            let codes: Vec<&str> = report
                .findings
                .iter()
                .filter(|f| f.severity == proto::Severity::Error as i32)
                .map(|f| f.code.as_str())
                .collect();
            if codes.is_empty() {
                "FAILED".into()
            } else {
                format!("FAILED ({})", codes.join(", "))
            }
        }
    }
}

fn timestamp(value: Option<&prost_types::Timestamp>) -> Option<String> {
    let value = value?;
    let time = time::OffsetDateTime::from_unix_timestamp(value.seconds).ok()?;
    time.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// The inventory as an aligned table, one line per target; with where each target stands
/// against the desired state when the sidecar reconciles one.
fn inventory_table(entries: &[proto::KeyInventoryEntry]) -> String {
    let header = [
        "ACCOUNT",
        "REGION",
        "RESOURCE TYPE",
        "KEY",
        "VERIFICATION",
        "READ AT",
        "DESIRED STATE",
    ];
    let reconciled = entries
        .iter()
        .any(|e| desired_state_word(e.desired_state()).is_some());
    let rows: Vec<[String; 7]> = entries
        .iter()
        .map(|e| {
            [
                e.account_id.clone(),
                e.region.clone(),
                resource_type_name(e.resource_type),
                if !e.error.is_empty() {
                    e.error.clone()
                } else if e.kms_key_id.is_empty() {
                    "aws-owned".into()
                } else {
                    e.kms_key_id.clone()
                },
                verification_word(e),
                timestamp(e.read_at.as_ref()).unwrap_or_else(|| "-".into()),
                desired_state_word(e.desired_state()).unwrap_or("-").into(),
            ]
        })
        .collect();
    if reconciled {
        return aligned(&header, &rows);
    }
    // Without a reconcile the last column would say nothing: left out.
    let [header @ .., _] = header;
    let rows: Vec<[String; 6]> = rows.into_iter().map(|[row @ .., _]| row).collect();
    aligned(&header, &rows)
}

/// `rows` under `header`, each column as wide as its widest cell.
fn aligned<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; N]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut table = line(*header);
    for row in rows {
        table.push_str(&line(row.each_ref().map(String::as_str)));
    }
    table
}

fn entry_json(entry: &proto::KeyInventoryEntry) -> serde_json::Value {
    let mut value = json!({
        "account_id": entry.account_id,
        "region": entry.region,
        "resource_type": resource_type_name(entry.resource_type),
        "kms_key_id": (!entry.kms_key_id.is_empty()).then_some(&entry.kms_key_id),
        "verification": entry.report.as_ref().map(report_json),
        "read_at": timestamp(entry.read_at.as_ref()),
        "verified_at": timestamp(entry.verified_at.as_ref()),
        "desired_state": desired_state_word(entry.desired_state()),
    });
    if !entry.error.is_empty() {
        value["error"] = json!(entry.error);
    }
    value
}

/// Where the reconcile found an entry: `in`, `out`, `error`, or `null` when not reconciled.
fn desired_state_word(standing: proto::DesiredStateStanding) -> Option<&'static str> {
    match standing {
        proto::DesiredStateStanding::Unspecified => None,
        proto::DesiredStateStanding::In => Some("in"),
        proto::DesiredStateStanding::Out => Some("out"),
        proto::DesiredStateStanding::Error => Some("error"),
    }
}

fn report_json(report: &proto::VerificationReport) -> serde_json::Value {
    json!({
        "passed": report.passed,
        "profile": report.profile,
        "findings": report.findings.iter().map(|f| json!({
            "code": f.code,
            "severity": proto::Severity::try_from(f.severity)
                .map(|s| s.as_str_name().trim_start_matches("SEVERITY_").to_owned())
                .unwrap_or_default(),
            "message": f.message,
        })).collect::<Vec<_>>(),
    })
}

fn summary(scopes: u32, entries: &[proto::KeyInventoryEntry]) -> serde_json::Value {
    let read = entries.iter().filter(|e| e.error.is_empty());
    json!({
        "scopes": scopes,
        "targets": entries.len(),
        "customer_managed": read.clone().filter(|e| !e.kms_key_id.is_empty()).count(),
        "aws_owned": read.clone().filter(|e| e.kms_key_id.is_empty()).count(),
        "failing_verification": read.filter(|e| e.report.as_ref().is_some_and(|r| !r.passed)).count(),
        "errors": entries.iter().filter(|e| !e.error.is_empty()).count(),
    })
}

/// The desired-state file's text, checked here first so a mistake is shown against the
/// file (the sidecar checks it again with the same parser).
fn desired_state(path: &Path) -> Result<String, ExitCode> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| failed(format!("cannot read `{}`: {e}", path.display())))?;
    if let Err(error) = DesiredState::parse(&text) {
        let shown = error.render(
            &text,
            &path.display().to_string(),
            std::io::stderr().is_terminal(),
        );
        eprintln!("{}", shown.trim_end());
        return Err(failed(format!(
            "`{}` is not a valid desired state (line {}, column {})",
            path.display(),
            error.line(),
            error.column()
        )));
    }
    Ok(text)
}

/// A PlanFleet or ApplyFleet message: the changes, the scopes done and in all, and (on the
/// last) the summary.
type FleetParts = (
    Vec<proto::FleetChange>,
    u32,
    u32,
    Option<proto::FleetSummary>,
);

/// The messages of PlanFleet and ApplyFleet, which hold the same.
trait FleetMessage {
    fn parts(self) -> FleetParts;
}

macro_rules! fleet_message {
    ($($message:ty),+) => {$(
        impl FleetMessage for $message {
            fn parts(self) -> FleetParts {
                (self.changes, self.scopes_done, self.scopes_total, self.summary)
            }
        }
    )+};
}

fleet_message!(proto::PlanFleetResponse, proto::ApplyFleetResponse);

/// Every change of a PlanFleet or ApplyFleet stream, and its summary.
async fn gather<M: FleetMessage>(
    mut stream: tonic::Streaming<M>,
    progress: &Progress,
    what: &str,
) -> Result<(Vec<proto::FleetChange>, proto::FleetSummary), tonic::Status> {
    let mut changes = Vec::new();
    let mut summary = None;
    let gathered = async {
        while let Some(message) = stream.message().await? {
            let (batch, done, total, last) = message.parts();
            progress.show(what, done, total);
            changes.extend(batch);
            summary = summary.or(last);
        }
        Ok::<_, tonic::Status>(())
    }
    .await;
    progress.clear();
    gathered?;
    // The summary comes last: an answer without it was cut short, and what it holds is
    // not the whole plan.
    let summary = summary.ok_or_else(|| {
        tonic::Status::unavailable(format!(
            "the sidecar's answer ended before its summary, {what} unfinished"
        ))
    })?;
    Ok((changes, summary))
}

/// The plan of `desired_state`, gathered.
async fn planned(
    client: &mut EncryptionKeyServiceClient<Channel>,
    desired_state: String,
    progress: &Progress,
) -> Result<(Vec<proto::FleetChange>, proto::FleetSummary), tonic::Status> {
    let answer = client
        .plan_fleet(proto::PlanFleetRequest { desired_state })
        .await?;
    gather(answer.into_inner(), progress, "planning").await
}

/// What `plan` and `apply` start with: the desired-state file's text, checked, and a client
/// of the sidecar.
async fn desired_state_and_client(
    args: &PlanArgs,
) -> Result<(String, EncryptionKeyServiceClient<Channel>), ExitCode> {
    let text = desired_state(&args.file)?;
    match connect(&args.sidecar.socket).await {
        Ok(channel) => Ok((text, EncryptionKeyServiceClient::new(channel))),
        Err(message) => Err(failed(message)),
    }
}

async fn plan(args: PlanArgs) -> ExitCode {
    let (text, mut client) = match desired_state_and_client(&args).await {
        Ok(started) => started,
        Err(code) => return code,
    };
    let progress = Progress::new(args.format == Format::Table);
    let (changes, summary) = match planned(&mut client, text, &progress).await {
        Ok(planned) => planned,
        Err(status) => return call_failed(&status),
    };
    show(&changes, &summary, args.format, false);
    if summary.errors > 0 {
        return failed(format!(
            "{} target(s) cannot be brought to the desired state; see their error",
            summary.errors
        ));
    }
    if summary.updates + summary.resets > 0 {
        return ExitCode::from(2);
    }
    ExitCode::SUCCESS
}

async fn apply(args: ApplyArgs) -> ExitCode {
    let ApplyArgs { plan: args, yes } = args;
    let (text, mut client) = match desired_state_and_client(&args).await {
        Ok(started) => started,
        Err(code) => return code,
    };
    let progress = Progress::new(args.format == Format::Table);
    // Asked, the plan said yes to is what may be written: the sidecar plans again and
    // writes only the changes that are still the same.
    let mut confirmed = None;
    if !yes {
        if !std::io::stdin().is_terminal() {
            return failed(
                "fleet apply changes keys: pass --yes to apply without being asked (standard input is not a terminal to ask on)",
            );
        }
        let (changes, summary) = match planned(&mut client, text.clone(), &progress).await {
            Ok(planned) => planned,
            Err(status) => return call_failed(&status),
        };
        // The plan to confirm is for the person at the terminal: on standard error when
        // standard output carries the JSON.
        match args.format {
            Format::Table => show(&changes, &summary, Format::Table, false),
            Format::Json => eprint!("{}", changes_table(&changes, &summary, false)),
        }
        let writes = summary.updates + summary.resets;
        if writes == 0 {
            eprintln!("Nothing to apply.");
            if args.format == Format::Json {
                // What an apply that writes nothing answers: the changes, none applied.
                show(&changes, &summary, Format::Json, true);
            }
            return if summary.errors > 0 {
                failed(format!("{} target(s) have errors", summary.errors))
            } else {
                ExitCode::SUCCESS
            };
        }
        eprint!("Apply {writes} change(s)? Only 'yes' applies: ");
        let mut answer = String::new();
        if std::io::stdin().read_line(&mut answer).is_err() || answer.trim() != "yes" {
            return failed("not applied");
        }
        confirmed = Some(proto::ConfirmedPlan {
            changes: changes
                .into_iter()
                .map(|change| proto::FleetChange {
                    report: None,
                    ..change
                })
                .collect(),
        });
    }
    let applied = async {
        let answer = client
            .apply_fleet(proto::ApplyFleetRequest {
                desired_state: text,
                confirmed,
            })
            .await?;
        gather(answer.into_inner(), &progress, "applying").await
    };
    let (changes, summary) = match applied.await {
        Ok(applied) => applied,
        Err(status) => return call_failed(&status),
    };
    show(&changes, &summary, args.format, true);
    let failures: Vec<String> = changes
        .iter()
        .filter(|c| !c.error.is_empty())
        .map(|c| format!("  {}: {}", place(c), c.error))
        .collect();
    if failures.is_empty() {
        return ExitCode::SUCCESS;
    }
    failed(format!(
        "{} target(s) are not in the desired state:\n{}",
        failures.len(),
        failures.join("\n")
    ))
}

/// Where a change is, as messages name it.
fn place(change: &proto::FleetChange) -> String {
    let resource_type =
        (change.resource_type != 0).then(|| resource_type_name(change.resource_type));
    [
        Some(change.account_id.as_str()),
        Some(change.region.as_str()),
        resource_type.as_deref(),
    ]
    .into_iter()
    .flatten()
    .filter(|part| !part.is_empty())
    .collect::<Vec<_>>()
    .join("/")
}

/// A change's action, as the plan names it.
fn action_word(change: &proto::FleetChange) -> &'static str {
    if !change.error.is_empty() {
        return "error";
    }
    match change.action() {
        proto::FleetAction::None => "none",
        proto::FleetAction::Update => "update",
        proto::FleetAction::Reset => "reset",
        proto::FleetAction::Unspecified => "error",
    }
}

/// Prints the changes and summary as `format` says; `applied`: the answer of an apply.
fn show(
    changes: &[proto::FleetChange],
    summary: &proto::FleetSummary,
    format: Format,
    applied: bool,
) {
    match format {
        Format::Json => emit_json(&json!({
            "changes": changes.iter().map(|c| {
                let mut value = json!({
                    "account_id": (!c.account_id.is_empty()).then_some(&c.account_id),
                    "region": (!c.region.is_empty()).then_some(&c.region),
                    "resource_type": (c.resource_type != 0).then(|| resource_type_name(c.resource_type)),
                    "action": action_word(c),
                    "from": (!c.from_kms_key_id.is_empty()).then_some(&c.from_kms_key_id),
                    "to": (!c.to_kms_key_id.is_empty()).then_some(&c.to_kms_key_id),
                    "line": c.line,
                });
                if !c.error.is_empty() {
                    value["error"] = json!(c.error);
                }
                if let Some(report) = &c.report {
                    value["report"] = report_json(report);
                }
                if applied {
                    value["applied"] = json!(c.applied);
                    value["retries"] = json!(c.retries);
                }
                value
            }).collect::<Vec<_>>(),
            "summary": {
                "unchanged": summary.unchanged,
                "updates": summary.updates,
                "resets": summary.resets,
                "errors": summary.errors,
                "applied": applied.then_some(summary.applied),
                "retries": applied.then_some(summary.retries),
            },
        })),
        Format::Table => emit(&changes_table(changes, summary, applied)),
    }
}

/// The changes as a table, and the summary line.
fn changes_table(
    changes: &[proto::FleetChange],
    summary: &proto::FleetSummary,
    applied: bool,
) -> String {
    let key = |arn: &str| {
        if arn.is_empty() {
            "aws-owned".to_owned()
        } else {
            arn.to_owned()
        }
    };
    let header = ["ACCOUNT", "REGION", "RESOURCE TYPE", "ACTION", "CHANGE"];
    let rows: Vec<[String; 5]> = changes
        .iter()
        .map(|c| {
            let detail = if !c.error.is_empty() {
                c.error.clone()
            } else if c.action() == proto::FleetAction::None {
                key(&c.from_kms_key_id)
            } else {
                let done = if applied && c.applied {
                    " (applied)"
                } else {
                    ""
                };
                format!(
                    "{} -> {}{done}",
                    key(&c.from_kms_key_id),
                    key(&c.to_kms_key_id)
                )
            };
            [
                c.account_id.clone(),
                c.region.clone(),
                if c.resource_type == 0 {
                    String::new()
                } else {
                    resource_type_name(c.resource_type)
                },
                action_word(c).to_owned(),
                detail,
            ]
        })
        .collect();
    let mut text = aligned(&header, &rows);
    text.push_str(&if applied {
        format!(
            "Applied: {} written ({} updated, {} reset), {} unchanged, {} error(s), {} throttled write(s) tried again.\n",
            summary.applied,
            summary.updates,
            summary.resets,
            summary.unchanged,
            summary.errors,
            summary.retries
        )
    } else {
        format!(
            "Plan: {} to update, {} to reset, {} unchanged, {} error(s).\n",
            summary.updates, summary.resets, summary.unchanged, summary.errors
        )
    });
    text
}
