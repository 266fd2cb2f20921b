//! `trias-validator`: wiring only. Parses arguments, starts telemetry, loads the configuration
//! and runs the validator until Ctrl-C or SIGTERM.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use trias_validator::ValidatorConfig;

/// The Trias validator: decides whether a token allows an action. Holds public keys only.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Configuration file (TOML); TRIAS_VALIDATOR_* environment variables override it.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let config = match ValidatorConfig::load(args.config.as_deref(), &env) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("trias-validator: configuration: {e}");
            return ExitCode::from(2);
        }
    };
    trias_runtime::telemetry::init(config.log_json);
    match trias_validator::run(&config, trias_validator::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "validator stopped");
            eprintln!("trias-validator: {e}");
            ExitCode::FAILURE
        }
    }
}
