//! `trias-issuer`: wiring only. Parses arguments, starts telemetry, loads the configuration,
//! binds, and calls [`trias_issuer::serve`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use tokio::net::TcpListener;
use trias_issuer::IssuerConfig;
use trias_runtime::clock::SystemClock;

/// The Trias issuer: holds the signing keys and mints tokens.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Configuration file (TOML); TRIAS_ISSUER_* environment variables override it.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let config = match IssuerConfig::load(args.config.as_deref(), &env) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("trias-issuer: configuration: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    trias_runtime::telemetry::init(config.log_json);
    match run(config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "issuer stopped");
            eprintln!("trias-issuer: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(config: IssuerConfig) -> Result<(), Box<dyn std::error::Error>> {
    let issuer = trias_issuer::open(&config, Arc::new(SystemClock)).await?;
    let grpc = TcpListener::bind(config.grpc_addr).await?;
    let http = TcpListener::bind(config.http_addr).await?;
    tracing::info!(grpc = %grpc.local_addr()?, http = %http.local_addr()?, issuer = %issuer.settings().issuer, "issuer listening");
    trias_issuer::serve(issuer, grpc, http, shutdown_signal()).await?;
    tracing::info!("issuer stopped");
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = term => {} }
}
