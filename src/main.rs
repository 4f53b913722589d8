//! The `inspector-keyd` command: parses the command line, then hands over to the CLI or to
//! the [`App`].

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use inspector_keyd::{
    app::{App, Hooks},
    cli::{self, Cli, Command},
    config::{LogFormat, Settings},
    server,
};
use tracing_subscriber::{
    EnvFilter,
    filter::{LevelFilter, Targets},
    layer::SubscriberExt,
    util::SubscriberInitExt,
};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return command_line_refused(&error),
    };
    match cli.command {
        Command::Serve {
            config,
            log_format,
            ready_file,
        } => serve(config, log_format, ready_file),
        Command::Policy(command) => cli::policy(command),
        Command::Config(cli::ConfigCommand::Check(args)) => cli::config_check(args),
        Command::Fleet(command) => cli::fleet(command),
    }
}

/// Prints clap's answer to a command line it refused (or to `--help`), and exits as clap
/// would, with one exception: `fleet plan` means "changes pending" by exit code 2 (as
/// `terraform plan -detailed-exitcode`), so a mistake on a `fleet` command line is 1 there,
/// as every other failure of `fleet` is, and never reads as pending changes in CI.
fn command_line_refused(error: &clap::Error) -> ExitCode {
    let _ = error.print();
    let code = error.exit_code();
    if code != 0
        && std::env::args_os()
            .nth(1)
            .is_some_and(|command| command == "fleet")
    {
        return ExitCode::FAILURE;
    }
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// The most the AWS SDK and the HTTP and TLS stacks may log, whatever `RUST_LOG` or
/// `log_level` asks for. Below `info` they write what must never reach a log: the AWS SDK
/// the requests it signs and sends (the canonical request with the `x-amz-security-token`
/// session token, the `Authorization` header with its signature) and the bodies it gets
/// back (code snippets); h2, hyper and tonic the frames and headers of every connection
/// (callers' bearer tokens). At `info` and above they log nothing of a request (checked for
/// the versions in Cargo.lock, and at `trace` on both backends by tests/log_secrets.rs),
/// and their warnings (an unreadable AWS config file, an unexpected connection error) stay
/// visible, so the cap is `info` rather than `warn`.
const WIRE_LOG_CAP: LevelFilter = LevelFilter::INFO;

/// The targets [`WIRE_LOG_CAP`] holds, as prefixes (a target matches every target it
/// begins: `aws` is `aws_config`, `aws_runtime`, `aws_sigv4`, `aws_smithy_*`, `aws_sdk_*`;
/// `hyper` is also `hyper_util` and `hyper_rustls`; `tower` is also `tower_http`).
const WIRE_LOG_TARGETS: [&str; 8] = [
    "aws",
    "hyper",
    "h2",
    "rustls",
    "tokio_rustls",
    "tower",
    "tonic",
    "axum",
];

fn init_logs(settings: &Settings, log_format: Option<String>) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.config.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // The cap is a second filter every event must also pass, not directives added to the
    // user's: in an EnvFilter the most specific directive wins (a user's
    // `aws_smithy_runtime::client=trace` beats an added `aws_smithy_runtime=info`), and a span
    // directive (`[rpc]=trace`) enables every event inside its spans, the SDK's included.
    // Elsewhere it lets through what the filter does, and no more: its default is the
    // filter's own most verbose level, which is also the process's, so below it every
    // `trace!` and `debug!` of the HTTP stack (dozens a request) is skipped by one comparison
    // instead of asking the subscriber.
    let most_verbose = filter.max_level_hint().unwrap_or(LevelFilter::TRACE);
    let cap = WIRE_LOG_TARGETS
        .iter()
        .fold(Targets::new().with_default(most_verbose), |cap, target| {
            cap.with_target(*target, WIRE_LOG_CAP)
        });
    let shown = filter.to_string();
    let format = match log_format.as_deref() {
        Some("json") => LogFormat::Json,
        Some(_) => LogFormat::Text,
        None => settings.log_format,
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        // One JSON object per line; the RPC span (request id, method) on every line.
        LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .finish()
            .with(cap)
            .init(),
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .finish()
            .with(cap)
            .init(),
    }
    // For whoever raised the level and wonders why the SDK and the HTTP stack stay quiet.
    tracing::debug!(
        filter = %shown,
        capped = %WIRE_LOG_TARGETS.join(", "),
        cap = %WIRE_LOG_CAP,
        "log filter in force; the AWS SDK and the HTTP and TLS libraries are capped"
    );
}

fn serve(
    config_path: Option<PathBuf>,
    log_format: Option<String>,
    ready_file: Option<PathBuf>,
) -> ExitCode {
    let settings = match Settings::load(config_path.as_deref(), std::env::vars()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("inspector-keyd: {e}");
            return ExitCode::from(2);
        }
    };
    init_logs(&settings, log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("inspector-keyd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        App::build(settings, Hooks::default())
            .await?
            .with_ready_file(ready_file)
            .run(server::termination_signal())
            .await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "inspector-keyd stopped");
            eprintln!("inspector-keyd: {e}");
            ExitCode::FAILURE
        }
    }
}
