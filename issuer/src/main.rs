//! `trias-issuer`: wiring only. Parses arguments, starts telemetry, loads the configuration
//! and runs the issuer until Ctrl-C or SIGTERM, or (`bootstrap`) creates the first two
//! administrators directly in its database.

#![allow(
    clippy::print_stdout,
    reason = "bootstrap shows the new credentials once, on stdout"
)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use trias_issuer::IssuerConfig;

/// The Trias issuer: holds the signing keys and mints tokens.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Configuration file (TOML); TRIAS_ISSUER_* environment variables override it.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the first two administrators (TOTP enrolled, random passwords, shown once)
    /// directly in the issuer's database: a one-time step on the issuer's own machine,
    /// refused once anyone holds the admin role. Every later role grant needs two of them.
    Bootstrap {
        /// An administrator's username; give exactly two, different.
        #[arg(long = "admin", value_name = "USERNAME", num_args = 1, required = true)]
        admins: Vec<String>,
        /// The policy role that grants the admin scopes.
        #[arg(long, default_value = "admin")]
        role: String,
    },
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
    if let Some(Command::Bootstrap { admins, role }) = args.command {
        trias_runtime::telemetry::init(config.log_json);
        return bootstrap(&config, &admins, &role).await;
    }
    let telemetry = trias_runtime::telemetry::init_service(config.log_json, "issuer");
    let result = trias_issuer::run(&config, trias_issuer::shutdown_signal()).await;
    // The last spans (the shutdown's included) are exported before the process ends.
    telemetry.shutdown().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "issuer stopped");
            eprintln!("trias-issuer: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn bootstrap(config: &IssuerConfig, admins: &[String], role: &str) -> ExitCode {
    let [first, second] = admins else {
        eprintln!("trias-issuer bootstrap: give exactly two --admin usernames");
        return ExitCode::from(2);
    };
    let clock = std::sync::Arc::new(trias_runtime::clock::SystemClock);
    let made = match trias_issuer::open(config, clock).await {
        Ok(issuer) => {
            let made = issuer.bootstrap([first, second], role).await;
            issuer.outbox().close().await;
            issuer.store().close().await;
            made
        }
        Err(e) => {
            eprintln!("trias-issuer bootstrap: {e}");
            return ExitCode::FAILURE;
        }
    };
    match made {
        Ok(admins) => {
            println!("Two administrators created (role {role}). These are shown once:");
            for admin in &admins {
                println!();
                println!("  username     {}", admin.user.user.username);
                println!("  password     {}", admin.password);
                println!(
                    "  totp secret  {}",
                    admin.user.totp_secret.as_deref().unwrap_or_default()
                );
                println!(
                    "  totp uri     {}",
                    admin.user.totp_uri.as_deref().unwrap_or_default()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("trias-issuer bootstrap: {e}");
            ExitCode::FAILURE
        }
    }
}
