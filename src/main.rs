//! The `inspector-keyd` command.

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use inspector_keyd::{
    cli::{self, Cli, Command},
    config::Config,
    server,
};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve { config, log_format } => serve(config, log_format),
        Command::Policy(command) => cli::policy(command),
        Command::Config(cli::ConfigCommand::Check(args)) => cli::config_check(args),
    }
}

fn serve(config_path: Option<PathBuf>, log_format: Option<String>) -> ExitCode {
    let mut config = match Config::load(config_path.as_deref(), std::env::vars()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("inspector-keyd: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    if let Some(format) = log_format {
        config.ops.log_format = format;
    }
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.ops.log_format == "json" {
        // One JSON object per line; the RPC span (request id, method) on every line.
        logs.json()
            .with_current_span(true)
            .with_span_list(false)
            .init();
    } else {
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
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
    match runtime.block_on(server::serve(config, server::termination_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "inspector-keyd stopped");
            eprintln!("inspector-keyd: {e}");
            ExitCode::FAILURE
        }
    }
}
