//! `trias-auditor`: wiring only. Parses arguments, starts telemetry, loads the configuration
//! and runs the auditor until Ctrl-C or SIGTERM.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use trias_auditor::AuditorConfig;

/// The Trias auditor: the append-only, tamper-evident audit log.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Configuration file (TOML); TRIAS_AUDITOR_* environment variables override it.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let config = match AuditorConfig::load(args.config.as_deref(), &env) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("trias-auditor: configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let telemetry = trias_runtime::telemetry::init_service(config.log_json, "auditor");
    let result = trias_auditor::run(&config, trias_auditor::shutdown_signal()).await;
    // The last spans (the shutdown's included) are exported before the process ends.
    telemetry.shutdown().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "auditor stopped");
            eprintln!("trias-auditor: {e}");
            ExitCode::FAILURE
        }
    }
}
