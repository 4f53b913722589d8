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
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve {
            config,
            log_format,
            ready_file,
        } => serve(config, log_format, ready_file),
        Command::Policy(command) => cli::policy(command),
        Command::Config(cli::ConfigCommand::Check(args)) => cli::config_check(args),
    }
}

fn init_logs(settings: &Settings, log_format: Option<String>) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.config.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
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
            .init(),
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
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
