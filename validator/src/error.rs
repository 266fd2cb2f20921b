//! The validator's errors and their one mapping to gRPC statuses.
//!
//! A deny is not an error: it is a normal answer with a reason. Errors are for requests that
//! cannot be decided at all: a malformed request, an outbox that cannot record the decision,
//! or a ledger that cannot be reached.

use std::collections::HashMap;

use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};

/// What a caller of the validator can be told went wrong. Messages are safe to show the
/// caller; internal details go to the log.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("the audit outbox cannot record the check; nothing was decided")]
    AuditUnavailable,
    #[error("the dual-control ledger is unavailable; nothing was decided")]
    LedgerUnavailable,
    /// The string is for the log only; the caller sees "internal error".
    #[error("internal error")]
    Internal(String),
}

impl Error {
    /// The OAuth error code carried in the status details.
    pub fn oauth_code(&self) -> &'static str {
        match self {
            Error::InvalidRequest(_) => "invalid_request",
            Error::AuditUnavailable | Error::LedgerUnavailable => "temporarily_unavailable",
            Error::Internal(_) => "server_error",
        }
    }

    fn grpc_code(&self) -> Code {
        match self {
            Error::InvalidRequest(_) => Code::InvalidArgument,
            Error::AuditUnavailable | Error::LedgerUnavailable => Code::Unavailable,
            Error::Internal(_) => Code::Internal,
        }
    }
}

/// The domain of the `google.rpc.ErrorInfo` every Trias error carries.
pub const ERROR_DOMAIN: &str = "trias";

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        if let Error::Internal(detail) = &error {
            tracing::error!(%detail, "internal error");
        }
        let message = error.to_string();
        let metadata = HashMap::from([("error_description".to_owned(), message.clone())]);
        let details = ErrorDetails::with_error_info(error.oauth_code(), ERROR_DOMAIN, metadata);
        tonic::Status::with_error_details(error.grpc_code(), message, details)
    }
}
