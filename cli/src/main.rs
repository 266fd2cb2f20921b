//! `trias`: the command line of the Trias suite. Wiring only: parses arguments and calls the
//! command's module.

#![allow(clippy::print_stdout, reason = "a command-line tool answers on stdout")]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod up;

/// Trias: an OAuth 2.0 token suite with separation of duties.
#[derive(Debug, Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the suite locally on SQLite: creates a data directory with a sample policy, keys
    /// and demo credentials on first run, prints the endpoints, stops on Ctrl-C.
    Up {
        /// Where keys, databases, the policy and the demo credentials live.
        #[arg(long, default_value = ".trias")]
        data_dir: PathBuf,
    },
    /// Verify the audit log without trusting the auditor: checkpoint signatures, consistency
    /// with a checkpoint saved earlier, and the whole tree re-derived from an export.
    Audit {
        #[command(subcommand)]
        command: trias_cli::audit::AuditCommand,
    },
    /// Run one service in this process (what `trias up` starts for each service).
    #[command(hide = true)]
    Serve {
        /// The service to run.
        #[arg(value_parser = ["issuer", "validator", "auditor"])]
        service: String,
        /// Its configuration file.
        #[arg(long)]
        config: PathBuf,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Up { data_dir } => up::up(&data_dir).await,
        Command::Audit { command } => return trias_cli::audit::main(command).await,
        Command::Serve { service, config } => up::serve(&service, &config).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trias: {e}");
            ExitCode::FAILURE
        }
    }
}
