//! The issuer's HTTP endpoints, so that standard OAuth clients work unchanged: the token
//! endpoint (RFC 6749), revocation (RFC 7009), server metadata (RFC 8414), the JWKS
//! (RFC 7517), and the authorization endpoint's login page (`login`). The JSON endpoints'
//! errors are RFC 6749 §5.2 JSON with the matching HTTP status.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use data_encoding::BASE64;
use serde_json::json;

use crate::error::Error;
use crate::issuer::{Issuer, TokenInput};
use crate::keys::jwks_json;

/// Largest accepted request body: an OAuth form is a few hundred bytes. A larger one is
/// refused 413 before it is read whole.
pub const MAX_BODY: usize = 16 * 1024;

/// The HTTP router; serve it with `axum::serve` and
/// `into_make_service_with_connect_info::<SocketAddr>()`, so that the per-source limits
/// know each request's address (without it they see none, and do not apply).
pub fn router(issuer: Issuer) -> Router {
    Router::new()
        .route("/oauth2/token", post(token))
        .route("/oauth2/revoke", post(revoke))
        .route("/.well-known/oauth-authorization-server", get(metadata))
        .route("/.well-known/jwks.json", get(jwks))
        .merge(crate::login::routes())
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(trias_runtime::trace::http_span))
        .with_state(issuer)
}

/// The address a request came from: the peer of its connection, if the router was served
/// with connect info.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Source(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Source {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Source(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(addr)| addr.ip()),
        ))
    }
}

/// The `Retry-After` header of a response to a rate-limited request (RFC 9110 §10.2.3).
pub(crate) fn retry_after(response: &mut Response, error: &Error) {
    if let Some(seconds) = error.retry_after()
        && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
    {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
}

/// An OAuth error response; `basic` adds the challenge RFC 6749 §5.2 asks for when the client
/// tried HTTP Basic.
struct OAuthError {
    error: Error,
    basic: bool,
}

impl From<Error> for OAuthError {
    fn from(error: Error) -> Self {
        OAuthError {
            error,
            basic: false,
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        if let Error::Internal(detail) = &self.error {
            tracing::error!(%detail, "internal error");
        }
        let status =
            StatusCode::from_u16(self.error.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
        let body = json!({ "error": self.error.oauth_code(), "error_description": self.error.to_string() });
        let mut response = (status, no_store(), axum::Json(body)).into_response();
        retry_after(&mut response, &self.error);
        if self.basic && status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"trias\""),
            );
        }
        response
    }
}

fn no_store() -> [(header::HeaderName, HeaderValue); 2] {
    [
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (header::PRAGMA, HeaderValue::from_static("no-cache")),
    ]
}

/// A parsed `application/x-www-form-urlencoded` body or query. Empty values count as absent
/// (RFC 6749 §3.1); a repeated parameter is an error (§3.1, §3.2); unknown ones are ignored.
pub(crate) struct Form(HashMap<String, String>);

impl Form {
    pub(crate) fn parse(headers: &HeaderMap, body: &[u8]) -> Result<Form, Error> {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let media_type = content_type.split(';').next().unwrap_or("").trim();
        if !media_type.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            return Err(Error::InvalidRequest(
                "the body must be application/x-www-form-urlencoded".into(),
            ));
        }
        // Decoded strictly: a lossy decoder would turn bytes that are not UTF-8 into U+FFFD,
        // so a malformed body would surface as some other error, or as a different value.
        let text = std::str::from_utf8(body)
            .map_err(|_| Error::InvalidRequest("the form body is malformed".into()))?;
        Form::decode(text, "the form body is malformed")
    }

    /// Parses a URL's query component (RFC 6749 §3.1: the same encoding as a form body).
    pub(crate) fn from_query(query: &str) -> Result<Form, Error> {
        Form::decode(query, "the query is malformed")
    }

    fn decode(text: &str, malformed: &str) -> Result<Form, Error> {
        let malformed = || Error::InvalidRequest(malformed.to_owned());
        let mut map = HashMap::new();
        for pair in text.split('&').filter(|pair| !pair.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = form_decode(key).ok_or_else(malformed)?;
            let value = form_decode(value).ok_or_else(malformed)?;
            if value.is_empty() {
                continue;
            }
            if map.insert(key.clone(), value).is_some() {
                return Err(Error::InvalidRequest(format!(
                    "parameter {key} is repeated"
                )));
            }
        }
        Ok(Form(map))
    }

    pub(crate) fn take(&mut self, key: &str) -> Option<String> {
        self.0.remove(key)
    }
}

/// Decodes one form-encoded name or value (`+` is a space, then percent-decoding); `None` if
/// the result is not UTF-8.
fn form_decode(text: &str) -> Option<String> {
    percent_encoding::percent_decode_str(&text.replace('+', " "))
        .decode_utf8()
        .ok()
        .map(|decoded| decoded.into_owned())
}

/// Client credentials from HTTP Basic (RFC 6749 §2.3.1, form-encoded then base64) or from
/// the body, never both.
fn client_credentials(
    headers: &HeaderMap,
    form: &mut Form,
) -> Result<(String, Option<String>, bool), Error> {
    let body_id = form.take("client_id");
    let body_secret = form.take("client_secret");
    let Some(auth) = headers.get(header::AUTHORIZATION) else {
        return Ok((body_id.unwrap_or_default(), body_secret, false));
    };
    let auth = auth.to_str().map_err(|_| Error::InvalidClient)?;
    let Some(encoded) = auth.strip_prefix("Basic ") else {
        return Err(Error::InvalidRequest(
            "only HTTP Basic client authentication is supported".into(),
        ));
    };
    if body_secret.is_some() {
        return Err(Error::InvalidRequest(
            "the client authenticated in more than one way".into(),
        ));
    }
    let decoded = BASE64
        .decode(encoded.trim().as_bytes())
        .map_err(|_| Error::InvalidClient)?;
    let decoded = String::from_utf8(decoded).map_err(|_| Error::InvalidClient)?;
    let (id, secret) = decoded.split_once(':').ok_or(Error::InvalidClient)?;
    let unescape = |s: &str| form_decode(s).ok_or(Error::InvalidClient);
    let (id, secret) = (unescape(id)?, unescape(secret)?);
    if body_id.as_ref().is_some_and(|b| *b != id) {
        return Err(Error::InvalidRequest(
            "client_id differs from the authenticated client".into(),
        ));
    }
    Ok((id, Some(secret), true))
}

/// The request parsing the token and revocation endpoints run before they look at any client
/// or grant, reachable from outside the crate for the fuzz targets in `fuzz/` only: that is a
/// separate crate, which cannot see `pub(crate)` items. Hidden, and not part of the issuer's
/// API; the endpoints themselves call `Form` and `client_credentials` directly.
#[doc(hidden)]
pub mod fuzzing {
    use std::collections::HashMap;

    use axum::http::HeaderMap;

    use super::{Form, client_credentials};
    use crate::error::Error;

    /// A request body's form parameters, as the token endpoint reads them.
    pub fn parse_form(headers: &HeaderMap, body: &[u8]) -> Result<HashMap<String, String>, Error> {
        Form::parse(headers, body).map(|form| form.0)
    }

    /// A URL query's parameters, as the authorization endpoint reads them.
    pub fn parse_query(query: &str) -> Result<HashMap<String, String>, Error> {
        Form::from_query(query).map(|form| form.0)
    }

    /// The client's id, secret and whether it used HTTP Basic, from the headers and the form;
    /// `form` is left without `client_id` and `client_secret`, as the endpoints see it.
    pub fn client(
        headers: &HeaderMap,
        form: &mut HashMap<String, String>,
    ) -> Result<(String, Option<String>, bool), Error> {
        let mut wrapped = Form(std::mem::take(form));
        let credentials = client_credentials(headers, &mut wrapped);
        *form = wrapped.0;
        credentials
    }
}

async fn token(
    State(issuer): State<Issuer>,
    Source(source): Source,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut basic = headers.contains_key(header::AUTHORIZATION);
    let result = async {
        let mut form = match Form::parse(&headers, &body) {
            Ok(form) => form,
            Err(error) => return Err(issuer.refuse_token("", "", source, error).await),
        };
        let (client_id, client_secret, used_basic) = match client_credentials(&headers, &mut form) {
            Ok(credentials) => credentials,
            Err(error) => {
                let grant = form.take("grant_type").unwrap_or_default();
                return Err(issuer.refuse_token("", &grant, source, error).await);
            }
        };
        basic = used_basic;
        let input = TokenInput {
            grant_type: form.take("grant_type").unwrap_or_default(),
            client_id,
            client_secret,
            scope: form.take("scope"),
            resource: form.take("resource"),
            code: form.take("code"),
            code_verifier: form.take("code_verifier"),
            redirect_uri: form.take("redirect_uri"),
            refresh_token: form.take("refresh_token"),
            source,
        };
        issuer.token(input).await
    }
    .await;
    match result {
        Ok(issued) => {
            let mut body = json!({
                "access_token": issued.access_token,
                "token_type": "Bearer",
                "expires_in": issued.expires_in,
                "scope": issued.scope,
            });
            if let Some(refresh) = issued.refresh_token {
                body["refresh_token"] = json!(refresh);
            }
            (StatusCode::OK, no_store(), axum::Json(body)).into_response()
        }
        Err(error) => OAuthError { error, basic }.into_response(),
    }
}

async fn revoke(
    State(issuer): State<Issuer>,
    Source(source): Source,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut basic = headers.contains_key(header::AUTHORIZATION);
    let result = async {
        let mut form = match Form::parse(&headers, &body) {
            Ok(form) => form,
            Err(error) => return Err(issuer.refuse_revocation("", source, error).await),
        };
        let (client_id, client_secret, used_basic) = match client_credentials(&headers, &mut form) {
            Ok(credentials) => credentials,
            Err(error) => return Err(issuer.refuse_revocation("", source, error).await),
        };
        basic = used_basic;
        let token = form.take("token").unwrap_or_default();
        let hint = form.take("token_type_hint");
        issuer
            .revoke(
                &client_id,
                client_secret.as_deref(),
                &token,
                hint.as_deref(),
                source,
            )
            .await
    }
    .await;
    match result {
        Ok(()) => (StatusCode::OK, no_store()).into_response(),
        Err(error) => OAuthError { error, basic }.into_response(),
    }
}

async fn metadata(State(issuer): State<Issuer>) -> Response {
    let base = issuer.settings().issuer.trim_end_matches('/').to_owned();
    let scopes: Vec<&str> = issuer.policy().scopes().collect();
    axum::Json(json!({
        "issuer": issuer.settings().issuer,
        "authorization_endpoint": format!("{base}/oauth2/authorize"),
        "token_endpoint": format!("{base}/oauth2/token"),
        "revocation_endpoint": format!("{base}/oauth2/revoke"),
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "grant_types_supported": ["client_credentials", "authorization_code", "refresh_token"],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": true,
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "scopes_supported": scopes,
    }))
    .into_response()
}

async fn jwks(State(issuer): State<Issuer>) -> Response {
    (
        [(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=60"),
        )],
        axum::Json(jwks_json(&issuer.jwks())),
    )
        .into_response()
}
