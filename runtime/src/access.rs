//! Bearer tokens on gRPC for services that hold no token keys: the client-side interceptor
//! that sends one, the server-side reader, and [`TokenChecker`], which asks the validator
//! whether a token allows an action. The auditor's security-team APIs and the issuer's admin
//! API decide access this way, so only the validator ever validates a token.

use std::fmt;
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use trias_proto::v1::validator_client::ValidatorClient;
use trias_proto::v1::{CheckDecision, CheckRequest};

use crate::tls::{TlsError, Transport, identity_of};

/// The metadata key of the bearer token.
pub const AUTHORIZATION: &str = "authorization";

/// The token of a request's `authorization: Bearer …` metadata, if it carries one.
pub fn bearer_of<T>(request: &tonic::Request<T>) -> Option<&str> {
    let value = request.metadata().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token.trim())
}

/// Adds `authorization: Bearer <token>` to every request of a client; with no token it adds
/// nothing. Its `Debug` never shows the token.
#[derive(Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl fmt::Debug for Bearer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Bearer(..)"
        } else {
            "Bearer(none)"
        })
    }
}

impl Bearer {
    /// A bearer for `token`; refuses one that cannot be a header value.
    pub fn new(token: Option<&str>) -> Result<Bearer, String> {
        match token {
            None => Ok(Bearer(None)),
            Some(token) => {
                let mut value: MetadataValue<Ascii> = format!("Bearer {token}")
                    .parse()
                    .map_err(|_| "the token holds characters a header cannot carry".to_owned())?;
                value.set_sensitive(true);
                Ok(Bearer(Some(value)))
            }
        }
    }
}

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert(AUTHORIZATION, value.clone());
        }
        Ok(request)
    }
}

/// Asks the validator whether a bearer token allows an action at one audience (the calling
/// service's: under mTLS the validator binds it to this service's identity anyway).
#[derive(Debug, Clone)]
pub struct TokenChecker {
    client: ValidatorClient<crate::trace::Traced>,
    audience: String,
}

impl TokenChecker {
    /// A checker asking the validator at `url` (which must prove `spiffe://trias/validator`)
    /// about tokens for `audience`; connects lazily, so a validator that is down only fails
    /// the checks made meanwhile.
    pub fn new(transport: &Transport, url: &str, audience: &str) -> Result<TokenChecker, TlsError> {
        let channel = transport
            .endpoint(url, &identity_of("validator"))?
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(10))
            .connect_lazy();
        Ok(TokenChecker {
            client: ValidatorClient::new(crate::trace::traced(channel)),
            audience: audience.to_owned(),
        })
    }

    /// The validator's decision on `token` for `action` on `resource`. An error means the
    /// validator could not be asked (or refused this service); a deny is a decision.
    pub async fn check(
        &self,
        token: &str,
        action: &str,
        resource: &str,
    ) -> Result<CheckDecision, tonic::Status> {
        let request = CheckRequest {
            token: token.to_owned(),
            action: action.to_owned(),
            resource: resource.to_owned(),
            audience: self.audience.clone(),
            context: Default::default(),
        };
        let mut client = self.client.clone();
        match client.check(request).await {
            Ok(decision) => Ok(decision.into_inner()),
            Err(status) => {
                tracing::error!(code = ?status.code(), message = status.message(), "the validator could not decide a token check");
                Err(tonic::Status::unavailable(
                    "the validator that checks tokens cannot be reached",
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;

    #[test]
    fn the_bearer_is_sent_and_read_back_but_never_printed() {
        let mut bearer = Bearer::new(Some("t0ken")).unwrap();
        assert_eq!(format!("{bearer:?}"), "Bearer(..)");
        let request = bearer.call(tonic::Request::new(())).unwrap();
        assert_eq!(bearer_of(&request), Some("t0ken"));
        let mut none = Bearer::new(None).unwrap();
        assert_eq!(
            bearer_of(&none.call(tonic::Request::new(())).unwrap()),
            None
        );
        assert!(Bearer::new(Some("bad\ntoken")).is_err());
    }

    #[test]
    fn only_a_bearer_scheme_with_a_token_counts() {
        let with = |value: &str| {
            let mut request = tonic::Request::new(());
            request
                .metadata_mut()
                .insert(AUTHORIZATION, value.parse().unwrap());
            request
        };
        assert_eq!(bearer_of(&with("bearer abc")), Some("abc"));
        assert_eq!(bearer_of(&with("Basic abc")), None);
        assert_eq!(bearer_of(&with("Bearer ")), None);
    }
}
