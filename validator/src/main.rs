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
    let telemetry = trias_runtime::telemetry::init_service(config.log_json, "validator");
    let result = trias_validator::run(&config, trias_validator::shutdown_signal()).await;
    // The last spans (the shutdown's included) are exported before the process ends.
    telemetry.shutdown().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "validator stopped");
            eprintln!("trias-validator: {e}");
            ExitCode::FAILURE
        }
    }
}
