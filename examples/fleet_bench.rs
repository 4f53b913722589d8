//! The fleet benchmark: `inspector-keyd fleet plan` and `fleet apply` across an emulated
//! organization on the local backend (by default 200 accounts × 17 Regions, 3,400 scopes,
//! one target each), from an empty organization, then a second `apply` that must write
//! nothing. Wall time of each command, the backend calls each made per scope (from
//! `inspector_keyd_backend_calls_total`), the sidecar's CPU time, and its peak resident
//! memory. Goals are printed with a mark; no time is asserted (the machine is noisy). The
//! tool fails only when something does not work: a command's error, a plan with errors, an
//! apply that does not write every scope, a second apply that writes.
//!
//! Run: `cargo build --release --bin inspector-keyd && cargo run --release --example
//! fleet_bench` (see BENCHMARKS.md; `--quick` is the tiny run the tests make).

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use clap::Parser;
use hyper_util::rt::TokioIo;
use inspector_keyd::proto::{self, local_kms_service_client::LocalKmsServiceClient};
use tonic::transport::{Channel, Endpoint, Uri};

#[derive(Parser, Debug)]
#[command(about = "inspector-keyd fleet plan/apply benchmark")]
struct Args {
    /// Accounts managed: the sidecar's own and this many less one others.
    #[arg(long, default_value_t = 200)]
    accounts: usize,
    /// Regions of each account (at most 17).
    #[arg(long, default_value_t = 17)]
    regions: usize,
    /// Key and alias creations in flight at once during the (unmeasured) setup.
    #[arg(long, default_value_t = 16)]
    setup_concurrency: usize,
    /// The `inspector-keyd` binary. Default: the one built beside this example.
    #[arg(long)]
    keyd: Option<PathBuf>,
    /// A tiny run (3 accounts × 2 Regions) that only proves the tool works.
    #[arg(long)]
    quick: bool,
}

/// The sidecar's own account (the local backend's default).
const OWN_ACCOUNT: &str = "111122223333";

/// Seventeen Region names; the sidecar's own (us-east-1) first.
const REGIONS: [&str; 17] = [
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
    "ca-central-1",
    "sa-east-1",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "eu-central-1",
    "eu-north-1",
    "eu-south-1",
    "ap-south-1",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-northeast-1",
    "ap-northeast-2",
];

const ALIAS: &str = "alias/inspector-code";

const DESIRED: &str = r#"# Every managed account and Region: Lambda scanning uses the alias inspector-code there.
[[key]]
accounts = ["*"]
regions = ["*"]
resource_type = "AWS_LAMBDA_FUNCTION"
kms_key = "alias/inspector-code"
"#;

/// The goals of the issue, for the marks.
const PLAN_GOAL: Duration = Duration::from_secs(10);
const APPLY_GOAL: Duration = Duration::from_secs(60);
const PLAN_CALLS_PER_SCOPE_GOAL: f64 = 4.0;

/// How long the sidecar may take to start, and one fleet command to run.
const START_LIMIT: Duration = Duration::from_secs(120);
const COMMAND_LIMIT: Duration = Duration::from_secs(1800);

type Failure = String;

fn main() -> ExitCode {
    let mut args = Args::parse();
    if args.quick {
        args.accounts = 3;
        args.regions = 2;
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("fleet bench failed: {failure}");
            ExitCode::FAILURE
        }
    }
}

/// The organization's accounts: the sidecar's own, then `count - 1` others.
fn accounts(count: usize) -> Vec<String> {
    let mut accounts = vec![OWN_ACCOUNT.to_owned()];
    accounts.extend((1..count).map(|i| format!("{:012}", 200_000_000_000usize + i)));
    accounts
}

fn run(args: &Args) -> Result<(), Failure> {
    if args.accounts == 0 || args.regions == 0 || args.regions > REGIONS.len() {
        return Err(format!(
            "--accounts must be at least 1 and --regions from 1 to {}",
            REGIONS.len()
        ));
    }
    let keyd = match &args.keyd {
        Some(path) => path.clone(),
        None => beside_this_example()?,
    };
    let accounts = accounts(args.accounts);
    let regions = &REGIONS[..args.regions];
    let scopes: Vec<(String, String)> = accounts
        .iter()
        .flat_map(|a| regions.iter().map(move |r| (a.clone(), (*r).to_owned())))
        .collect();
    let dir = tempfile::tempdir().map_err(|e| format!("cannot make a temporary directory: {e}"))?;
    let dir = dir.path();

    println!(
        "inspector-keyd fleet benchmark: {} accounts × {} Regions = {} scopes, one target each (AWS_LAMBDA_FUNCTION), local backend",
        accounts.len(),
        regions.len(),
        scopes.len()
    );

    let config = dir.join("keyd.toml");
    write(&config, &configuration(dir, &accounts, regions))?;
    let started = Instant::now();
    let sidecar = Sidecar::start(&keyd, &config, dir)?;
    let startup = started.elapsed();
    println!(
        "start-up: {} ms to the ready file (serving), {} KiB resident",
        startup.as_millis(),
        sidecar.status_kib("VmRSS")
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    let started = Instant::now();
    runtime.block_on(set_up_keys(
        &sidecar.socket,
        &scopes,
        args.setup_concurrency.max(1),
    ))?;
    println!(
        "setup (not measured for the goals): a key and {ALIAS} in each scope, {} at once: {:.1} s; {} KiB resident, peak {} KiB",
        args.setup_concurrency.max(1),
        started.elapsed().as_secs_f64(),
        sidecar.status_kib("VmRSS"),
        sidecar.status_kib("VmHWM")
    );

    let desired = dir.join("desired.toml");
    write(&desired, DESIRED)?;
    let total = scopes.len() as u64;

    let plan = sidecar.measure(&keyd, "plan", &desired)?;
    plan.expect(2, |s| {
        s.errors == 0 && s.updates == total && s.unchanged == 0 && s.resets == 0
    })?;
    let apply = sidecar.measure(&keyd, "apply", &desired)?;
    apply.expect(0, |s| {
        s.errors == 0 && s.updates == total && s.applied == Some(total)
    })?;
    let again = sidecar.measure(&keyd, "apply", &desired)?;
    again.expect(0, |s| {
        s.errors == 0 && s.updates == 0 && s.unchanged == total && s.applied == Some(0)
    })?;

    let peak = sidecar.status_kib("VmHWM");
    let resident = sidecar.status_kib("VmRSS");
    println!();
    println!(
        "{:<14} {:>9} {:>13} {:>9} {:>11} {:>8}   goal",
        "command", "wall", "backend calls", "per scope", "sidecar CPU", "written"
    );
    let rows = [
        ("plan", &plan, goal_time(plan.wall, PLAN_GOAL)),
        ("apply", &apply, goal_time(apply.wall, APPLY_GOAL)),
        (
            "apply again",
            &again,
            format!(
                "0 writes: {}",
                if again.summary.applied == Some(0) {
                    "pass"
                } else {
                    "over"
                }
            ),
        ),
    ];
    for (name, measured, goal) in rows {
        println!(
            "{name:<14} {:>7.2} s {:>13} {:>9.2} {:>9.2} s {:>8}   {goal}",
            measured.wall.as_secs_f64(),
            measured.calls_total(),
            measured.calls_total() as f64 / total as f64,
            measured.cpu.as_secs_f64(),
            measured
                .summary
                .applied
                .map_or_else(|| "-".to_owned(), |a| a.to_string()),
        );
    }
    let plan_per_scope = plan.calls_total() as f64 / total as f64;
    println!(
        "plan backend calls per scope: {plan_per_scope:.2} (≤ {PLAN_CALLS_PER_SCOPE_GOAL}: {})",
        if plan_per_scope <= PLAN_CALLS_PER_SCOPE_GOAL {
            "pass"
        } else {
            "over"
        }
    );
    println!();
    for (name, measured) in [("plan", &plan), ("apply", &apply), ("apply again", &again)] {
        let by_operation: Vec<String> = measured
            .calls
            .iter()
            .map(|((operation, class), n)| {
                format!(
                    "{operation}{} {n} ({:.2}/scope)",
                    if class == "ok" {
                        String::new()
                    } else {
                        format!("[{class}]")
                    },
                    *n as f64 / total as f64
                )
            })
            .collect();
        println!(
            "{name} printed {} KB of JSON; backend calls by operation: {}",
            measured.output_bytes / 1000,
            if by_operation.is_empty() {
                "none".to_owned()
            } else {
                by_operation.join(", ")
            }
        );
    }
    println!(
        "sidecar resident memory: {resident} KiB at the end, peak {peak} KiB (VmHWM over the whole run, setup included)"
    );
    println!("no timing is asserted: the marks say where the goals stand on this run");
    Ok(())
}

/// `inspector-keyd` beside the directory this example was built in (`target/<profile>/`).
fn beside_this_example() -> Result<PathBuf, Failure> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let keyd = exe
        .parent()
        .and_then(Path::parent)
        .map(|profile| profile.join("inspector-keyd"))
        .ok_or("cannot find the target directory")?;
    if keyd.exists() {
        Ok(keyd)
    } else {
        Err(format!(
            "{} is not built: run `cargo build --release --bin inspector-keyd` first (or pass --keyd)",
            keyd.display()
        ))
    }
}

fn write(path: &Path, text: &str) -> Result<(), Failure> {
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The sidecar's configuration: every account (its own too) in every Region, loopback
/// listeners on ephemeral ports, the AWS-protocol door off.
fn configuration(dir: &Path, accounts: &[String], regions: &[&str]) -> String {
    let quoted = |p: PathBuf| format!("{:?}", p.to_string_lossy());
    let regions = regions
        .iter()
        .map(|r| format!("{r:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut text = format!(
        "state_dir = {}\n[listen]\nunix_socket = {}\ntcp = \"127.0.0.1:0\"\n[aws_api]\nlisten = \"\"\n[ops]\nmetrics_listen = \"127.0.0.1:0\"\n",
        quoted(dir.join("state")),
        quoted(dir.join("keyd.sock")),
    );
    for account in accounts {
        text.push_str(&format!(
            "\n[[accounts]]\nid = \"{account}\"\nregions = [{regions}]\n"
        ));
    }
    text
}

/// A key and its alias in every scope, `at_once` scopes at a time.
async fn set_up_keys(
    socket: &Path,
    scopes: &[(String, String)],
    at_once: usize,
) -> Result<(), Failure> {
    let kms = LocalKmsServiceClient::new(unix_channel(socket).await?);
    let mut running = tokio::task::JoinSet::new();
    let mut pending = scopes.iter().cloned();
    let mut done = 0;
    // Each turn starts scopes until `at_once` are running, then waits for one.
    for _ in 0..=scopes.len() {
        while running.len() < at_once {
            let Some((account_id, region)) = pending.next() else {
                break;
            };
            let mut kms = kms.clone();
            running.spawn(async move {
                let place = format!("{account_id}/{region}");
                let key = kms
                    .create_key(proto::CreateKeyRequest {
                        account_id,
                        region,
                        ..Default::default()
                    })
                    .await
                    .map_err(|s| format!("CreateKey in {place}: {s:?}"))?
                    .into_inner()
                    .key_metadata
                    .ok_or_else(|| format!("CreateKey in {place} answered no key"))?
                    .arn;
                kms.create_alias(proto::CreateAliasRequest {
                    alias_name: ALIAS.into(),
                    target_key_id: key,
                })
                .await
                .map_err(|s| format!("CreateAlias in {place}: {s:?}"))?;
                Ok::<(), Failure>(())
            });
        }
        match running.join_next().await {
            Some(finished) => {
                finished.map_err(|e| format!("a setup task failed: {e}"))??;
                done += 1;
            }
            None => break,
        }
    }
    if done == scopes.len() {
        Ok(())
    } else {
        Err(format!("set up {done} of {} scopes", scopes.len()))
    }
}

async fn unix_channel(path: &Path) -> Result<Channel, Failure> {
    let path = path.to_owned();
    let shown = path.display().to_string();
    Endpoint::try_from("http://localhost")
        .map_err(|e| e.to_string())?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .map_err(|e| format!("cannot connect to {shown}: {e}"))
}

/// A running `inspector-keyd serve`.
struct Sidecar {
    child: Child,
    socket: PathBuf,
    metrics: SocketAddr,
    log: PathBuf,
}

impl Sidecar {
    /// Starts `keyd serve --config config` and waits for its ready file.
    fn start(keyd: &Path, config: &Path, dir: &Path) -> Result<Sidecar, Failure> {
        let ready = dir.join("ready.json");
        let log = dir.join("keyd.log");
        let log_file = std::fs::File::create(&log).map_err(|e| format!("cannot log: {e}"))?;
        let mut command = Command::new(keyd);
        command
            .args(["serve", "--config"])
            .arg(config)
            .arg("--ready-file")
            .arg(&ready)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log_file);
        for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("INSPECTOR_KEYD_")) {
            command.env_remove(name);
        }
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", keyd.display()))?;
        let mut sidecar = Sidecar {
            child,
            socket: PathBuf::new(),
            metrics: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
        };
        let deadline = Instant::now() + START_LIMIT;
        let addresses: serde_json::Value = loop {
            if let Some(json) = std::fs::read_to_string(&ready)
                .ok()
                .and_then(|text| serde_json::from_str(&text).ok())
            {
                break json;
            }
            if let Ok(Some(status)) = sidecar.child.try_wait() {
                return Err(format!(
                    "the sidecar exited ({status}) before serving:\n{}",
                    sidecar.log_tail()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the sidecar did not serve within {START_LIMIT:?}:\n{}",
                    sidecar.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        sidecar.socket = addresses["unix_socket"]
            .as_str()
            .map(PathBuf::from)
            .ok_or("the ready file names no Unix socket")?;
        sidecar.metrics = addresses["metrics"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .ok_or("the ready file names no metrics listener")?;
        Ok(sidecar)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// A `/proc/<pid>/status` figure in KiB (`VmRSS`, `VmHWM`).
    fn status_kib(&self, field: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// CPU time the sidecar's threads have run so far (`/proc/<pid>/task/*/schedstat`).
    fn cpu(&self) -> Duration {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.child.id())) else {
            return Duration::ZERO;
        };
        let nanos: u64 = tasks
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok())
            .filter_map(|line| line.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
        Duration::from_nanos(nanos)
    }

    /// Every backend call so far, by (operation, class), from the backend-call metric.
    fn backend_calls(&self) -> Result<BTreeMap<(String, String), u64>, Failure> {
        let failed = |e: std::io::Error| format!("cannot scrape {}: {e}", self.metrics);
        let mut stream = std::net::TcpStream::connect(self.metrics).map_err(failed)?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(failed)?;
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .map_err(failed)?;
        let mut text = String::new();
        stream.read_to_string(&mut text).map_err(failed)?;
        let label = |labels: &str, name: &str| {
            labels
                .split(&format!("{name}=\""))
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or_default()
                .to_owned()
        };
        let mut calls = BTreeMap::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("inspector_keyd_backend_calls_total{") else {
                continue;
            };
            let Some((labels, value)) = rest.rsplit_once("} ") else {
                continue;
            };
            let value: f64 = value
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("unreadable sample: {line}"))?;
            *calls
                .entry((label(labels, "operation"), label(labels, "class")))
                .or_insert(0) += value as u64;
        }
        Ok(calls)
    }

    /// Runs `inspector-keyd fleet <command> <desired> --format json` (with `--yes` for
    /// apply) against this sidecar; its wall time, the backend calls and CPU it cost the
    /// sidecar, its exit code and summary.
    fn measure(&self, keyd: &Path, command: &str, desired: &Path) -> Result<Measured, Failure> {
        let calls_before = self.backend_calls()?;
        let cpu_before = self.cpu();
        let mut cli = Command::new(keyd);
        cli.args(["fleet", command])
            .arg(desired)
            .args(["--format", "json", "--socket"])
            .arg(&self.socket)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if command == "apply" {
            cli.arg("--yes");
        }
        // Run on a thread of its own, so a command that hangs fails the bench after
        // COMMAND_LIMIT instead of holding it.
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let started = Instant::now();
            let output = cli.output();
            let _ = sender.send((output, started.elapsed()));
        });
        let (output, wall) = receiver
            .recv_timeout(COMMAND_LIMIT)
            .map_err(|_| format!("fleet {command} did not finish within {COMMAND_LIMIT:?}"))?;
        let output = output.map_err(|e| format!("cannot run fleet {command}: {e}"))?;
        let (status, out) = (output.status, output.stdout);
        let errors = String::from_utf8_lossy(&output.stderr).into_owned();
        let cpu = self.cpu().saturating_sub(cpu_before);
        let calls_after = self.backend_calls()?;
        let calls = calls_after
            .iter()
            .filter_map(|(k, after)| {
                let made = after - calls_before.get(k).copied().unwrap_or(0);
                (made > 0).then(|| (k.clone(), made))
            })
            .collect();
        let json: serde_json::Value = serde_json::from_slice(&out).map_err(|e| {
            format!(
                "fleet {command} printed no JSON ({e}; {status}): {}",
                errors.trim()
            )
        })?;
        let number = |name: &str| json["summary"][name].as_u64();
        let summary = Summary {
            unchanged: number("unchanged").unwrap_or(u64::MAX),
            updates: number("updates").unwrap_or(u64::MAX),
            resets: number("resets").unwrap_or(u64::MAX),
            errors: number("errors").unwrap_or(u64::MAX),
            applied: number("applied"),
        };
        let first_error = json["changes"]
            .as_array()
            .and_then(|c| c.iter().find_map(|c| c["error"].as_str()))
            .map(str::to_owned);
        Ok(Measured {
            command: command.to_owned(),
            wall,
            cpu,
            calls,
            code: status.code(),
            summary,
            first_error,
            stderr: errors,
            output_bytes: out.len(),
        })
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fleet command's summary (`--format json`).
#[derive(Debug)]
struct Summary {
    unchanged: u64,
    updates: u64,
    resets: u64,
    errors: u64,
    applied: Option<u64>,
}

/// One measured fleet command.
struct Measured {
    command: String,
    wall: Duration,
    cpu: Duration,
    calls: BTreeMap<(String, String), u64>,
    code: Option<i32>,
    summary: Summary,
    first_error: Option<String>,
    stderr: String,
    /// Bytes of JSON the command printed.
    output_bytes: usize,
}

impl Measured {
    fn calls_total(&self) -> u64 {
        self.calls.values().sum()
    }

    /// Fails unless the command exited `code` with a summary `ok` accepts.
    fn expect(&self, code: i32, ok: impl Fn(&Summary) -> bool) -> Result<(), Failure> {
        if self.code == Some(code) && ok(&self.summary) {
            return Ok(());
        }
        Err(format!(
            "fleet {} exited {:?} (expected {code}) with {:?}; first error: {}; stderr: {}",
            self.command,
            self.code,
            self.summary,
            self.first_error.as_deref().unwrap_or("none"),
            self.stderr.trim()
        ))
    }
}

fn goal_time(wall: Duration, goal: Duration) -> String {
    format!(
        "≤ {} s: {}",
        goal.as_secs(),
        if wall <= goal { "pass" } else { "over" }
    )
}
