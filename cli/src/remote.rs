//! What every command that talks to a running service shares: where the services are, the
//! mutual-TLS identity the CLI presents, how a refusal becomes a message and an exit code.
//!
//! Exit codes are part of the interface, the same for every such command: 0 done (or
//! allowed), 1 the service answered no (a refused token request, a denied check, a refused
//! admin call), 2 the command could not get an answer (bad arguments, unreadable files, an
//! unreachable service).

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;
use trias_proto::v1::auditor_client::AuditorClient;
use trias_runtime::access::Bearer;
use trias_runtime::tls::{Transport, identity_of};

/// Exit code: done, or (for `trias check`) allowed.
pub const EXIT_OK: u8 = 0;
/// Exit code: the service answered no.
pub const EXIT_REFUSED: u8 = 1;
/// Exit code: no answer — bad arguments, unreadable files, an unreachable service.
pub const EXIT_USAGE: u8 = 2;

/// The `--help` text on exit codes, shared by the commands that use [`CliError`].
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  done (for `check`: allowed)
  1  the service answered no: refused, denied, not permitted
  2  no answer: bad arguments, unreadable files, an unreachable service";

/// Why a command did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CliError {
    /// The service answered, and the answer was no.
    #[error("{0}")]
    Refused(String),
    /// No answer: the message says what to fix.
    #[error("{0}")]
    Usage(String),
}

impl CliError {
    /// The process exit code for this outcome.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Refused(_) => EXIT_REFUSED,
            CliError::Usage(_) => EXIT_USAGE,
        }
    }

    /// A refusal or error status from `service`, with the OAuth error code the issuer puts
    /// in its `ErrorInfo` when there is one.
    pub fn from_status(service: &str, status: &Status) -> CliError {
        let code = oauth_error(status);
        let message = match code {
            Some(code) => format!("{service}: {code}: {}", status.message()),
            None => format!("{service}: {}", status.message()),
        };
        match status.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled => {
                CliError::Usage(format!(
                    "{message} (is the {service} running and reachable?)"
                ))
            }
            Code::Internal | Code::DataLoss | Code::Unimplemented => CliError::Usage(message),
            _ => CliError::Refused(message),
        }
    }
}

/// The OAuth error code (`invalid_grant`, `mfa_required`, …) the issuer puts in a status's
/// `google.rpc.ErrorInfo`, if there is one.
pub fn oauth_error(status: &Status) -> Option<String> {
    status
        .get_error_details()
        .error_info()
        .map(|info| info.reason.clone())
        .filter(|reason| !reason.is_empty())
}

/// A usage error with this message.
pub fn usage(message: impl Into<String>) -> CliError {
    CliError::Usage(message.into())
}

/// Where the services listen and how the CLI proves who it is; `. .trias/stack.env` sets
/// every one of these for the local stack.
#[derive(Debug, Clone, Args)]
pub struct Services {
    /// The issuer's gRPC address.
    #[arg(
        long,
        env = "TRIAS_ISSUER_GRPC",
        default_value = "http://127.0.0.1:7401",
        value_name = "URL"
    )]
    pub issuer: String,
    /// The validator's gRPC address.
    #[arg(
        long,
        env = "TRIAS_VALIDATOR_GRPC",
        default_value = "http://127.0.0.1:7411",
        value_name = "URL"
    )]
    pub validator: String,
    /// The auditor's gRPC address.
    #[arg(
        long,
        env = "TRIAS_AUDITOR_GRPC",
        default_value = "http://127.0.0.1:7421",
        value_name = "URL"
    )]
    pub auditor: String,
    /// The PKI directory (`trias pki init`): the CLI connects with mutual TLS using `ca.pem`
    /// and its identity's certificate and key from here, and requires each service to prove
    /// its own identity (`spiffe://trias/<service>`). Without the certificate there it
    /// connects in plain text (services in development mode).
    #[arg(
        long,
        env = "TRIAS_PKI",
        default_value = ".trias/pki",
        value_name = "DIR"
    )]
    pub pki: PathBuf,
}

impl Services {
    /// A channel to `service` ("issuer", "validator" or "auditor") at `url`, presenting the
    /// certificate of `identity` from the PKI directory; each call may take a minute.
    pub async fn channel(
        &self,
        service: &str,
        url: &str,
        identity: &str,
    ) -> Result<Channel, CliError> {
        connect(
            &self.pki,
            identity,
            service,
            url,
            Some(Duration::from_secs(60)),
        )
        .await
    }
}

/// A channel to `service` at `url` as `identity` (its certificate from `pki`), requiring the
/// service to prove `spiffe://trias/<service>`; calls time out after `timeout`, if given.
pub async fn connect(
    pki: &Path,
    identity: &str,
    service: &str,
    url: &str,
    timeout: Option<Duration>,
) -> Result<Channel, CliError> {
    let transport = transport(pki, identity)?;
    let mut endpoint = transport
        .endpoint(url, &identity_of(service))
        .map_err(|e| usage(format!("--{service} {url:?}: {e}")))?
        .connect_timeout(Duration::from_secs(10));
    if let Some(timeout) = timeout {
        endpoint = endpoint.timeout(timeout);
    }
    endpoint
        .connect()
        .await
        .map_err(|e| usage(format!("cannot reach the {service} at {url}: {e}")))
}

/// An auditor client as `cli` that sends the analyst's token, if one is given. No call
/// timeout: an export or a watch may stream for as long as it takes.
pub async fn auditor_client(
    url: &str,
    pki: &Path,
    token: Option<&str>,
) -> Result<AuditorClient<InterceptedService<Channel, Bearer>>, CliError> {
    let bearer = Bearer::new(token).map_err(|e| usage(format!("--token: {e}")))?;
    let channel = connect(pki, "cli", "auditor", url, None).await?;
    // Entries are at most 64 KiB each, but a proof or page may carry more than the default.
    Ok(
        AuditorClient::with_interceptor(channel, bearer)
            .max_decoding_message_size(64 * 1024 * 1024),
    )
}

/// The transport presenting `identity`'s certificate from `pki`, or plain text when that
/// certificate does not exist (but only for the CLI's own identity: a missing backend
/// certificate is a mistake worth naming).
pub fn transport(pki: &Path, identity: &str) -> Result<Transport, CliError> {
    let files = crate::pki::Pki::new(pki).files(identity);
    if files.cert.exists() {
        Transport::load(&files).map_err(|e| usage(format!("--pki {}: {e}", pki.display())))
    } else if identity == "cli" {
        Ok(Transport::plaintext())
    } else {
        Err(usage(format!(
            "no certificate for {identity} in {} (create it with `trias pki init --backend {identity}`)",
            pki.display()
        )))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;
    use tonic_types::{ErrorDetails, StatusExt};

    #[test]
    fn refusals_exit_1_and_unreachable_services_exit_2() {
        let details = ErrorDetails::with_error_info("invalid_scope", "trias", []);
        let refused =
            Status::with_error_details(Code::InvalidArgument, "scope x is not available", details);
        let error = CliError::from_status("issuer", &refused);
        assert_eq!(error.exit_code(), EXIT_REFUSED);
        assert_eq!(
            error.to_string(),
            "issuer: invalid_scope: scope x is not available"
        );

        let down = CliError::from_status("auditor", &Status::unavailable("connection refused"));
        assert_eq!(down.exit_code(), EXIT_USAGE);
        assert!(down.to_string().contains("is the auditor running"));

        let denied = CliError::from_status("issuer", &Status::permission_denied("no"));
        assert_eq!(denied.exit_code(), EXIT_REFUSED);
    }

    #[test]
    fn a_missing_backend_certificate_is_named() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            transport(dir.path(), "cli").is_ok(),
            "the CLI falls back to plain text"
        );
        let error = transport(dir.path(), "payments").unwrap_err();
        assert!(
            error
                .to_string()
                .contains("trias pki init --backend payments")
        );
    }
}
