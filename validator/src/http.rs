//! Token introspection (RFC 7662) over HTTP, for backends that do not speak gRPC:
//! `POST /oauth2/introspect` with a form `token`, the caller authenticated with HTTP Basic
//! against the configured introspection clients. The check runs for the caller's configured
//! audience; any deny is `{"active": false}` with no reason, as RFC 7662 §2.2 asks.

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use data_encoding::BASE64;
use serde_json::json;

use crate::error::Error;
use crate::validator::{CheckInput, Validator};

/// The HTTP router; serve it with `axum::serve`.
pub fn router(validator: Validator) -> Router {
    // A form with one maximal token, percent-encoded, and room for the other parameters.
    let max_body = validator.settings().max_token_bytes * 3 + 4096;
    Router::new()
        .route("/oauth2/introspect", post(introspect))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn(trias_runtime::trace::http_span))
        .with_state(validator)
}

fn no_store() -> [(header::HeaderName, HeaderValue); 2] {
    [
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (header::PRAGMA, HeaderValue::from_static("no-cache")),
    ]
}

fn error(status: StatusCode, code: &str, description: &str) -> Response {
    let body = json!({ "error": code, "error_description": description });
    let mut response = (status, no_store(), axum::Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"trias\""),
        );
    }
    response
}

/// HTTP Basic credentials (RFC 6749 §2.3.1: form-encoded, then base64).
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = BASE64.decode(encoded.trim().as_bytes()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let unescape = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8()
            .ok()
            .map(|c| c.into_owned())
    };
    Some((unescape(id)?, unescape(secret)?))
}

/// The form body: `application/x-www-form-urlencoded`, no repeated parameter.
fn form(headers: &HeaderMap, body: &[u8]) -> Result<HashMap<String, String>, &'static str> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    if !media_type.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Err("the body must be application/x-www-form-urlencoded");
    }
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_bytes(body).map_err(|_| "the form body is malformed")?;
    let mut map = HashMap::new();
    for (key, value) in pairs {
        if map.insert(key, value).is_some() {
            return Err("a parameter is repeated");
        }
    }
    Ok(map)
}

async fn introspect(
    State(validator): State<Validator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(audience) = basic_credentials(&headers)
        .and_then(|(id, secret)| validator.introspection_audience(&id, &secret))
    else {
        return error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "introspection needs valid HTTP Basic credentials",
        );
    };
    let mut form = match form(&headers, &body) {
        Ok(form) => form,
        Err(why) => return error(StatusCode::BAD_REQUEST, "invalid_request", why),
    };
    let Some(token) = form.remove("token").filter(|t| !t.is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "token is required",
        );
    };
    let input = CheckInput {
        token,
        action: None,
        resource: String::new(),
        audience,
        context: Default::default(),
        via: "introspection",
        ..CheckInput::default()
    };
    match validator.check(&input).await {
        Ok(verdict) => {
            let body = match verdict.claims.filter(|_| verdict.allowed) {
                Some(claims) => json!({
                    "active": true,
                    "scope": claims.scope(),
                    "client_id": claims.client_id,
                    "sub": claims.sub,
                    "exp": claims.exp,
                    "iat": claims.iat,
                    "iss": claims.iss,
                    "aud": claims.aud.first().cloned().unwrap_or_default(),
                    "jti": claims.jti,
                    "token_type": "Bearer",
                }),
                None => json!({ "active": false }),
            };
            (StatusCode::OK, no_store(), axum::Json(body)).into_response()
        }
        Err(e) => {
            let status = match e {
                Error::InvalidRequest(_) => StatusCode::BAD_REQUEST,
                Error::AuditUnavailable | Error::LedgerUnavailable => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            error(status, e.oauth_code(), &e.to_string())
        }
    }
}
