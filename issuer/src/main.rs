//! `trias-issuer`: wiring only. Parses arguments, starts telemetry, loads the configuration
//! and runs the issuer until Ctrl-C or SIGTERM.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use trias_issuer::IssuerConfig;

/// The Trias issuer: holds the signing keys and mints tokens.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Configuration file (TOML); TRIAS_ISSUER_* environment variables override it.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let config = match IssuerConfig::load(args.config.as_deref(), &env) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("trias-issuer: configuration: {e}");
            return ExitCode::from(2);
        }
    };
    trias_runtime::telemetry::init(config.log_json);
    match trias_issuer::run(&config, trias_issuer::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "issuer stopped");
            eprintln!("trias-issuer: {e}");
            ExitCode::FAILURE
        }
    }
}
