//! The auditor's errors and their one mapping to gRPC statuses.
//!
//! A refused append adds nothing: every error is about the whole request. Messages are safe
//! to show the caller; storage details go to the log.

use std::collections::HashMap;

use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};

use crate::store::StoreError;

/// What a caller of the auditor can be told went wrong.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// A malformed request, a bad range, an event that cannot be logged.
    #[error("{0}")]
    InvalidArgument(String),
    /// A producer the auditor does not accept appends from.
    #[error("{0}")]
    PermissionDenied(String),
    /// The log cannot be written or read right now; the caller may retry.
    #[error("the audit log is unavailable; nothing was appended")]
    Unavailable,
    /// The string is for the log only; the caller sees "internal error".
    #[error("internal error")]
    Internal(String),
}

impl Error {
    /// The OAuth error code carried in the status details.
    pub fn oauth_code(&self) -> &'static str {
        match self {
            Error::InvalidArgument(_) => "invalid_request",
            Error::PermissionDenied(_) => "access_denied",
            Error::Unavailable => "temporarily_unavailable",
            Error::Internal(_) => "server_error",
        }
    }

    fn grpc_code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::Unavailable => Code::Unavailable,
            Error::Internal(_) => Code::Internal,
        }
    }
}

impl From<StoreError> for Error {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Corrupt(detail) => Error::Internal(format!("corrupt log: {detail}")),
            other => {
                tracing::error!(error = %other, "audit log storage failed");
                Error::Unavailable
            }
        }
    }
}

impl From<crate::merkle::RangeError> for Error {
    fn from(error: crate::merkle::RangeError) -> Self {
        Error::InvalidArgument(error.to_string())
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
