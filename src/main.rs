//! The `inspector-keyd` command.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use inspector_keyd::{config::Config, server};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "inspector-keyd",
    version,
    about = "gRPC sidecar for Amazon Inspector's customer managed encryption key"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the gRPC API. With no config: local backend, state in ./state, a Unix socket
    /// at ./state/keyd.sock and loopback TCP on 127.0.0.1:50051.
    Serve {
        /// TOML configuration file; `INSPECTOR_KEYD_*` variables override it.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => serve(config),
    }
}

fn serve(config_path: Option<PathBuf>) -> ExitCode {
    let config = match Config::load(config_path.as_deref(), std::env::vars()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("inspector-keyd: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
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
