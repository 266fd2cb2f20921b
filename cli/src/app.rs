//! The `trias` command line: parses arguments and calls the command's module. The `trias`
//! binary is this module's [`main`], and so is the end-to-end suite's copy of it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::up;

/// Trias: an OAuth 2.0 token suite with separation of duties.
#[derive(Debug, Parser)]
#[command(name = "trias", version, propagate_version = true)]
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
        /// The services listen on the ports just above this one: the issuer on +1 (gRPC) and
        /// +2 (HTTP), the validator on +11 and +12, the auditor on +21. Recorded on first run.
        #[arg(long, default_value_t = up::DEFAULT_BASE_PORT)]
        base_port: u16,
    },
    /// Get an access token: client credentials, a user's login (authorization code with
    /// PKCE), or a refresh. Prints the token alone, or the whole response with `--json`.
    #[command(after_help = crate::remote::EXIT_CODES_HELP)]
    Token(crate::token::TokenArgs),
    /// Ask the validator whether a token allows an action on an object, as a backend would.
    /// Exit code 0 allowed, 1 denied.
    #[command(after_help = crate::remote::EXIT_CODES_HELP)]
    Check(crate::token::CheckArgs),
    /// Revoke an access or refresh token (RFC 7009); validators deny it within a second.
    #[command(after_help = crate::remote::EXIT_CODES_HELP)]
    Revoke(crate::token::RevokeArgs),
    /// Administration: clients, users, two-person role grants, key rotation.
    #[command(after_help = crate::remote::EXIT_CODES_HELP)]
    Admin(crate::admin::AdminArgs),
    /// The audit log: query it, watch alerts live, and verify it without trusting the
    /// auditor (checkpoint signatures, consistency with a saved checkpoint, the whole tree
    /// re-derived from an export).
    Audit {
        #[command(subcommand)]
        command: crate::audit::AuditCommand,
    },
    /// Development certificates: a CA and one certificate per service, for the CLI and for
    /// each named backend.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
    /// Print the current one-time code (RFC 6238) of a base32 TOTP secret, as an
    /// authenticator app would: for the local demo users, whose secrets are in stack.env. A
    /// real second factor lives on a separate device.
    Totp {
        /// The base32 secret (e.g. `$TRIAS_DEMO_ADMIN1_TOTP_SECRET`).
        secret: String,
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

#[derive(Debug, Subcommand)]
enum PkiCommand {
    /// Create the CA (if missing) and the missing certificates: issuer, validator, auditor,
    /// cli, and one per `--backend` (its identity is `spiffe://trias/<name>`, and the
    /// validator binds its checks to the audience of the same name).
    Init {
        /// Where the CA, certificates and keys are written.
        #[arg(long, default_value = ".trias/pki")]
        dir: PathBuf,
        /// A backend service to issue a certificate for; repeat for several.
        #[arg(long = "backend", value_name = "NAME")]
        backends: Vec<String>,
    },
}

/// `trias pki init`: says what it created and where.
fn pki_init(dir: &std::path::Path, backends: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let pki = crate::pki::Pki::new(dir);
    let created = pki.init(backends)?;
    if created.is_empty() {
        println!("{}: everything already exists", dir.display());
    }
    for name in created {
        println!("created {name} in {}", dir.display());
    }
    Ok(())
}

/// Runs the command line with the process's arguments.
pub fn main() -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("trias: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(Cli::parse()))
}

async fn run(cli: Cli) -> ExitCode {
    let outcome = match cli.command {
        Command::Up {
            data_dir,
            base_port,
        } => match up::Ports::new(base_port) {
            Some(ports) => up::up(&data_dir, ports).await,
            None => Err(format!(
                "--base-port {base_port} is too high: the stack needs 80 ports above it"
            )
            .into()),
        },
        Command::Audit { command } => return crate::audit::main(command).await,
        Command::Token(args) => {
            return answer(crate::token::token(args, &mut std::io::stdout()).await);
        }
        Command::Check(args) => {
            return answer(crate::token::check(args, &mut std::io::stdout()).await);
        }
        Command::Revoke(args) => {
            return answer(crate::token::revoke(args, &mut std::io::stdout()).await);
        }
        Command::Admin(args) => {
            return answer(crate::admin::run(args, &mut std::io::stdout()).await);
        }
        Command::Serve { service, config } => up::serve(&service, &config).await,
        Command::Totp { secret } => totp(&secret),
        Command::Pki {
            command: PkiCommand::Init { dir, backends },
        } => pki_init(&dir, &backends),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trias: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `trias totp`: the code for now.
fn totp(secret: &str) -> Result<(), Box<dyn std::error::Error>> {
    let normalized = secret.trim().trim_end_matches('=').to_uppercase();
    let key = data_encoding::BASE32_NOPAD
        .decode(normalized.as_bytes())
        .map_err(|e| format!("the secret is not base32: {e}"))?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    println!("{}", trias_issuer::secrets::totp_at(&key, now.as_secs()));
    Ok(())
}

/// The exit code of a command that talks to a service; its error goes to stderr.
fn answer(outcome: Result<(), crate::remote::CliError>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::from(crate::remote::EXIT_OK),
        Err(error) => {
            eprintln!("trias: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every command and every option says what it is for in `--help`.
    #[test]
    fn every_command_and_option_has_help() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", command.get_name());
            if command.get_about().is_none() && !command.is_hide_set() {
                missing.push(format!("{path}: no description"));
            }
            for arg in command.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && !arg.is_hide_set() && arg.get_help().is_none() {
                    missing.push(format!("{path} --{}: no help", arg.get_id()));
                }
            }
            for sub in command.get_subcommands() {
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "{}", missing.join("\n"));
    }

    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}

#[cfg(test)]
mod parsing {
    use clap::Parser;

    /// Tokens and secrets are base64url and may start with `-`: still values, not flags.
    #[test]
    fn secret_values_may_start_with_a_hyphen() {
        for args in [
            &[
                "trias",
                "token",
                "--client-id",
                "c",
                "--refresh-token",
                "-Opzv",
            ][..],
            &[
                "trias",
                "token",
                "--client-id",
                "c",
                "--client-secret",
                "-abc",
            ][..],
            &["trias", "revoke", "--client-id", "c", "--token", "-abc"][..],
            &[
                "trias", "check", "--as", "p", "--action", "a", "--token", "-abc",
            ][..],
            &["trias", "audit", "query", "--token", "-abc"][..],
            &["trias", "admin", "--token", "-abc", "users", "list"][..],
        ] {
            if let Err(e) = super::Cli::try_parse_from(args) {
                panic!("{args:?}: {e}");
            }
        }
    }
}
