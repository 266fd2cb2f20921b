//! The issuer's errors and their one mapping to gRPC statuses and OAuth error codes.

use std::collections::HashMap;

use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};

/// Everything a caller of the issuer can be told went wrong. Messages are safe to show the
/// caller; internal details go to the log, never into the message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("client authentication failed")]
    InvalidClient,
    #[error("{0}")]
    InvalidGrant(String),
    #[error("{0}")]
    UnauthorizedClient(String),
    #[error("unsupported grant type {0}")]
    UnsupportedGrantType(String),
    #[error("unsupported response type {0}")]
    UnsupportedResponseType(String),
    #[error("{0}")]
    InvalidScope(String),
    #[error("{0}")]
    InvalidTarget(String),
    #[error("{0}")]
    AccessDenied(String),
    #[error("invalid username or password")]
    LoginFailed,
    #[error("unsupported token type hint")]
    UnsupportedTokenType,
    #[error("{0}")]
    InvalidToken(String),
    #[error("{0}")]
    InsufficientScope(String),
    #[error("a second factor (totp) is required for the requested scope")]
    MfaRequired,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("the audit outbox cannot record the event; nothing was issued")]
    AuditUnavailable,
    /// A service the issuer depends on for this call (the validator) cannot be asked.
    #[error("{0}")]
    Unavailable(String),
    /// A rate limit refused the request; it may be retried after `retry_after` seconds.
    #[error("{}; retry after {retry_after} s", limit.message())]
    SlowDown { limit: Limit, retry_after: u64 },
    /// The string is for the log only; the caller sees "internal error".
    #[error("internal error")]
    Internal(String),
}

/// Which rate limit refused a request (`[limits]` in the issuer's configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `limits.token_per_client`: token requests of one authenticated client.
    TokenPerClient,
    /// `limits.failed_logins_per_user`: failed logins for one username.
    FailedLoginsPerUser,
    /// `limits.failures_per_source`: failed logins and client authentications from one
    /// source address.
    FailuresPerSource,
}

impl Limit {
    /// The configuration key, which the audit event names.
    pub fn name(self) -> &'static str {
        match self {
            Limit::TokenPerClient => "token_per_client",
            Limit::FailedLoginsPerUser => "failed_logins_per_user",
            Limit::FailuresPerSource => "failures_per_source",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Limit::TokenPerClient => "too many token requests from this client",
            Limit::FailedLoginsPerUser => "too many failed logins for this user",
            Limit::FailuresPerSource => "too many failed attempts from this address",
        }
    }
}

impl Error {
    /// The OAuth error code (RFC 6749 §5.2 and friends) for this error.
    pub fn oauth_code(&self) -> &'static str {
        match self {
            Error::InvalidRequest(_) | Error::NotFound(_) | Error::AlreadyExists(_) => {
                "invalid_request"
            }
            Error::InvalidClient => "invalid_client",
            Error::InvalidGrant(_) => "invalid_grant",
            Error::UnauthorizedClient(_) => "unauthorized_client",
            Error::UnsupportedGrantType(_) => "unsupported_grant_type",
            Error::UnsupportedResponseType(_) => "unsupported_response_type",
            Error::InvalidScope(_) => "invalid_scope",
            Error::InvalidTarget(_) => "invalid_target",
            Error::AccessDenied(_) | Error::LoginFailed => "access_denied",
            Error::UnsupportedTokenType => "unsupported_token_type",
            Error::InvalidToken(_) => "invalid_token",
            Error::InsufficientScope(_) => "insufficient_scope",
            Error::MfaRequired => "mfa_required",
            Error::AuditUnavailable | Error::Unavailable(_) => "temporarily_unavailable",
            // RFC 8628 §3.5 registers it for a client that polls too fast; a rate limit is
            // the same request to slow down.
            Error::SlowDown { .. } => "slow_down",
            Error::Internal(_) => "server_error",
        }
    }

    /// For a rate-limited request, the seconds after which it may be retried.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Error::SlowDown { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// The HTTP status of the RFC 6749 JSON error response.
    pub fn http_status(&self) -> u16 {
        match self {
            Error::InvalidClient | Error::InvalidToken(_) => 401,
            Error::AccessDenied(_) | Error::LoginFailed | Error::InsufficientScope(_) => 403,
            Error::NotFound(_) => 404,
            Error::AlreadyExists(_) => 409,
            Error::AuditUnavailable | Error::Unavailable(_) => 503,
            Error::SlowDown { .. } => 429,
            Error::Internal(_) => 500,
            _ => 400,
        }
    }

    fn grpc_code(&self) -> Code {
        match self {
            Error::InvalidRequest(_)
            | Error::InvalidScope(_)
            | Error::InvalidTarget(_)
            | Error::UnsupportedTokenType
            | Error::UnsupportedGrantType(_)
            | Error::UnsupportedResponseType(_) => Code::InvalidArgument,
            Error::InvalidClient | Error::InvalidToken(_) | Error::LoginFailed => {
                Code::Unauthenticated
            }
            Error::InvalidGrant(_)
            | Error::UnauthorizedClient(_)
            | Error::AccessDenied(_)
            | Error::InsufficientScope(_) => Code::PermissionDenied,
            Error::MfaRequired => Code::FailedPrecondition,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::AuditUnavailable | Error::Unavailable(_) => Code::Unavailable,
            Error::SlowDown { .. } => Code::ResourceExhausted,
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
        let mut details = ErrorDetails::with_error_info(error.oauth_code(), ERROR_DOMAIN, metadata);
        if let Some(seconds) = error.retry_after() {
            // google.rpc.RetryInfo: the gRPC form of HTTP's Retry-After.
            details.set_retry_info(Some(std::time::Duration::from_secs(seconds)));
        }
        tonic::Status::with_error_details(error.grpc_code(), message, details)
    }
}

impl From<crate::store::StoreError> for Error {
    fn from(error: crate::store::StoreError) -> Self {
        use crate::store::StoreError;
        match error {
            StoreError::AlreadyExists(what) => Error::AlreadyExists(what),
            StoreError::NotFound(what) => Error::NotFound(what),
            StoreError::Database(e) => Error::Internal(format!("database: {e}")),
            StoreError::Corrupt(what) => Error::Internal(format!("corrupt row: {what}")),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    #[test]
    fn a_rate_limited_request_is_slow_down_with_its_wait() {
        let error = Error::SlowDown {
            limit: Limit::FailedLoginsPerUser,
            retry_after: 30,
        };
        assert_eq!(error.oauth_code(), "slow_down");
        assert_eq!(error.http_status(), 429);
        assert_eq!(error.retry_after(), Some(30));
        assert_eq!(
            error.to_string(),
            "too many failed logins for this user; retry after 30 s"
        );
        let status = tonic::Status::from(error);
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.get_error_details().error_info().unwrap().reason,
            "slow_down"
        );
        assert_eq!(
            status.get_details_retry_info().unwrap().retry_delay,
            Some(std::time::Duration::from_secs(30))
        );
        assert_eq!(Error::InvalidClient.retry_after(), None);
    }
}
