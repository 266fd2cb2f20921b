//! The login page: the authorization endpoint of the authorization-code flow (RFC 6749 §4.1,
//! with PKCE S256 and the RFC 8707 `resource`), a minimal HTML form over [`Issuer::login`],
//! so that browsers and standard OAuth clients complete the flow without a frontend of their
//! own.
//!
//! A request whose client or redirect URI is wrong gets an error page and is never redirected
//! (RFC 6749 §4.1.2.1: the redirect URI is not trusted yet); any other refusal goes back to
//! the client's redirect URI with `error` and `state`, and a login back with `code`, `state`
//! and `iss` (RFC 9207). The form is protected by a double-submit token: a random value in a
//! cookie and in a hidden field, which must be equal before any login is attempted.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use ring::rand::SystemRandom;
use trias_policy::Acr;

use crate::error::Error;
use crate::http::{Form, Source};
use crate::issuer::{Issuer, LoginInput, MAX_FIELD_LEN};
use crate::secrets;
use crate::store::ClientRecord;

/// Where the page is served; also the CSRF cookie's path, so no other endpoint receives it.
const PATH: &str = "/oauth2/authorize";
/// The CSRF cookie. A `__Host-` name would need `Secure`, which a plain-HTTP issuer on
/// 127.0.0.1 cannot set.
const CSRF_COOKIE: &str = "trias_csrf";
/// The hidden form field that echoes the cookie.
const CSRF_FIELD: &str = "csrf";

/// The one message for a wrong username, password or one-time code, so the page never says
/// which part was wrong.
const LOGIN_FAILED: &str = "The username, password or one-time code is not correct.";

/// The characters a query value keeps unencoded (RFC 3986 unreserved).
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The login page's routes, merged into [`crate::http::router`].
pub(crate) fn routes() -> Router<Issuer> {
    Router::new()
        .route(PATH, get(show).post(submit))
        .layer(axum::middleware::map_response(page_headers))
}

/// The headers of every response of the page, errors and redirects included: nothing is
/// cached, nothing is loaded or framed, no referrer leaks the query (which holds `state`).
/// The CSP has no `form-action`: Chrome applies it to the redirect that follows the POST,
/// which goes to the client.
async fn page_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CACHE_CONTROL, "no-store"),
        (header::PRAGMA, "no-cache"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// The parameters of an authorization request (RFC 6749 §4.1.1, RFC 7636 §4.3, RFC 8707),
/// from the query of the GET or the hidden fields of the POST.
struct Authorize {
    response_type: Option<String>,
    client_id: String,
    redirect_uri: String,
    scope: Option<String>,
    state: Option<String>,
    code_challenge: String,
    code_challenge_method: String,
    resource: Option<String>,
}

impl Authorize {
    fn take(form: &mut Form) -> Authorize {
        Authorize {
            response_type: form.take("response_type"),
            client_id: form.take("client_id").unwrap_or_default(),
            redirect_uri: form.take("redirect_uri").unwrap_or_default(),
            scope: form.take("scope"),
            state: form.take("state"),
            code_challenge: form.take("code_challenge").unwrap_or_default(),
            code_challenge_method: form.take("code_challenge_method").unwrap_or_default(),
            resource: form.take("resource"),
        }
    }

    /// The parameters the form carries to the POST, as (name, value).
    fn fields(&self) -> Vec<(&'static str, &str)> {
        [
            ("response_type", self.response_type.as_deref()),
            ("client_id", Some(self.client_id.as_str())),
            ("redirect_uri", Some(self.redirect_uri.as_str())),
            ("scope", self.scope.as_deref()),
            ("state", self.state.as_deref()),
            ("code_challenge", Some(self.code_challenge.as_str())),
            (
                "code_challenge_method",
                Some(self.code_challenge_method.as_str()),
            ),
            ("resource", self.resource.as_deref()),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.filter(|v| !v.is_empty()).map(|v| (name, v)))
        .collect()
    }

    /// Checks everything but the user; returns the acr the login needs.
    fn check(&self, issuer: &Issuer, client: &ClientRecord) -> Result<Acr, Error> {
        match self.response_type.as_deref() {
            Some("code") => {}
            Some(other) => {
                return Err(Error::UnsupportedResponseType(truncate(other)));
            }
            None => return Err(Error::InvalidRequest("response_type is required".into())),
        }
        if self.state.as_ref().is_some_and(|s| s.len() > MAX_FIELD_LEN) {
            return Err(Error::InvalidRequest("state is too long".into()));
        }
        issuer.check_authorization(
            client,
            &self.code_challenge_method,
            &self.code_challenge,
            self.scope.as_deref(),
            self.resource.as_deref(),
        )
    }
}

/// What the form shows besides the request's parameters.
struct FormPage<'a> {
    client: &'a ClientRecord,
    csrf: &'a str,
    totp: bool,
    username: &'a str,
    message: Option<&'a str>,
}

async fn show(State(issuer): State<Issuer>, uri: Uri) -> Response {
    let request = match Form::from_query(uri.query().unwrap_or("")) {
        Ok(mut form) => Authorize::take(&mut form),
        Err(error) => return refusal_page(&error),
    };
    let client = match issuer
        .authorization_client(&request.client_id, &request.redirect_uri)
        .await
    {
        Ok(client) => client,
        Err(error) => return refusal_page(&error),
    };
    let acr = match request.check(&issuer, &client) {
        Ok(acr) => acr,
        Err(error) => return redirect_error(&issuer, &request, &error),
    };
    let csrf = match secrets::random_token(&SystemRandom::new()) {
        Ok(token) => token,
        Err(error) => return redirect_error(&issuer, &request, &error),
    };
    let page = FormPage {
        client: &client,
        csrf: &csrf,
        totp: acr >= Acr::Mfa,
        username: "",
        message: None,
    };
    let mut response = form_page(StatusCode::OK, &request, &page);
    let secure = if issuer.settings().issuer.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!("{CSRF_COOKIE}={csrf}; Path={PATH}; HttpOnly; SameSite=Strict{secure}");
    match HeaderValue::from_str(&cookie) {
        Ok(value) => {
            response.headers_mut().insert(header::SET_COOKIE, value);
            response
        }
        Err(_) => redirect_error(&issuer, &request, &Error::Internal("csrf cookie".into())),
    }
}

async fn submit(
    State(issuer): State<Issuer>,
    Source(source): Source,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut form = match Form::parse(&headers, &body) {
        Ok(form) => form,
        Err(error) => return refusal_page(&error),
    };
    // Nothing else is looked at before the CSRF check: a forged POST attempts no login.
    let csrf = form.take(CSRF_FIELD).unwrap_or_default();
    if !csrf_matches(cookie(&headers, CSRF_COOKIE).unwrap_or(""), &csrf) {
        tracing::warn!("login form refused: csrf token missing or mismatched");
        return message_page(
            StatusCode::FORBIDDEN,
            "Sign-in form expired",
            "This sign-in form is no longer valid (it expired, or was opened in another tab or \
             browser). Go back to the application and start signing in again.",
        );
    }
    let request = Authorize::take(&mut form);
    let username = form.take("username").unwrap_or_default();
    let password = form.take("password").unwrap_or_default();
    let totp = form.take("totp");
    let client = match issuer
        .authorization_client(&request.client_id, &request.redirect_uri)
        .await
    {
        Ok(client) => client,
        Err(error) => return refusal_page(&error),
    };
    let acr = match request.check(&issuer, &client) {
        Ok(acr) => acr,
        Err(error) => return redirect_error(&issuer, &request, &error),
    };
    let retry = |status: StatusCode, totp: bool, message: &str| {
        let page = FormPage {
            client: &client,
            csrf: &csrf,
            totp,
            username: &username,
            message: Some(message),
        };
        form_page(status, &request, &page)
    };
    if username.is_empty() || password.is_empty() {
        return retry(
            StatusCode::BAD_REQUEST,
            acr >= Acr::Mfa,
            "Enter your username and password.",
        );
    }
    let input = LoginInput {
        client_id: request.client_id.clone(),
        redirect_uri: request.redirect_uri.clone(),
        code_challenge: request.code_challenge.clone(),
        code_challenge_method: request.code_challenge_method.clone(),
        scope: request.scope.clone(),
        resource: request.resource.clone(),
        username: username.clone(),
        password,
        totp,
        source,
    };
    match issuer.login(input).await {
        Ok(outcome) => {
            let mut params = vec![("code", outcome.code.as_str())];
            if let Some(state) = &request.state {
                params.push(("state", state));
            }
            params.push(("iss", &issuer.settings().issuer));
            redirect(&outcome.redirect_uri, &params)
        }
        // A missing second factor is reported like a wrong one: it comes after the password
        // check, so saying so would confirm the password.
        Err(Error::LoginFailed) => retry(StatusCode::UNAUTHORIZED, acr >= Acr::Mfa, LOGIN_FAILED),
        Err(Error::MfaRequired) => retry(StatusCode::UNAUTHORIZED, true, LOGIN_FAILED),
        // Too many failures for this username or from this address: the form again, to be
        // tried later; the client gets no error, since the user may still sign in.
        Err(error @ Error::SlowDown { .. }) => {
            let seconds = error.retry_after().unwrap_or(1);
            let message = format!(
                "Too many failed sign-in attempts. Try again in {}.",
                wait(seconds)
            );
            let mut response = retry(StatusCode::TOO_MANY_REQUESTS, acr >= Acr::Mfa, &message);
            crate::http::retry_after(&mut response, &error);
            response
        }
        Err(error @ Error::InvalidClient) => refusal_page(&error),
        Err(error) => redirect_error(&issuer, &request, &error),
    }
}

/// A wait as people read it: seconds up to two minutes, then minutes (rounded up).
fn wait(seconds: u64) -> String {
    match seconds {
        1 => "1 second".to_owned(),
        s if s <= 120 => format!("{s} seconds"),
        s => format!("{} minutes", s.div_ceil(60)),
    }
}

/// The double-submit check: the cookie and the field are both present and equal. Their
/// SHA-256 digests are compared, so the comparison's timing says nothing about the token.
fn csrf_matches(cookie: &str, field: &str) -> bool {
    !cookie.is_empty()
        && !field.is_empty()
        && secrets::hash_secret(cookie) == secrets::hash_secret(field)
}

/// The value of the first cookie called `name`.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim())
}

/// A 303 to the client's redirect URI with `params` added to its query (RFC 6749 §3.1.2
/// allows the registered URI a query of its own).
fn redirect(redirect_uri: &str, params: &[(&str, &str)]) -> Response {
    // A registered URI should have no fragment (§3.1.2); if one does, it is dropped, since
    // the parameters must be in the query.
    let base = redirect_uri
        .split_once('#')
        .map_or(redirect_uri, |(base, _)| base);
    let mut location = base.to_owned();
    let mut separator = if base.contains('?') { '&' } else { '?' };
    for (name, value) in params {
        location.push(separator);
        separator = '&';
        location.push_str(name);
        location.push('=');
        location.extend(utf8_percent_encode(value, QUERY_VALUE));
    }
    match HeaderValue::from_str(&location) {
        Ok(location) => (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response(),
        Err(_) => message_page(
            StatusCode::BAD_REQUEST,
            "Sign-in failed",
            "The application's redirect address cannot be used.",
        ),
    }
}

/// RFC 6749 §4.1.2.1: a refusal once the redirect URI is trusted goes back to the client,
/// with `iss` as on success (RFC 9207 §2).
fn redirect_error(issuer: &Issuer, request: &Authorize, error: &Error) -> Response {
    if let Error::Internal(detail) = error {
        tracing::error!(%detail, "internal error");
    }
    let description = error.to_string();
    let mut params = vec![
        ("error", error.oauth_code()),
        ("error_description", description.as_str()),
    ];
    if let Some(state) = request
        .state
        .as_deref()
        .filter(|s| s.len() <= MAX_FIELD_LEN)
    {
        params.push(("state", state));
    }
    params.push(("iss", &issuer.settings().issuer));
    redirect(&request.redirect_uri, &params)
}

/// The page for a request that cannot be sent back to any client: unknown client, a redirect
/// URI that is missing or not registered, a malformed request.
fn refusal_page(error: &Error) -> Response {
    let (status, message) = match error {
        Error::InvalidClient => (
            StatusCode::BAD_REQUEST,
            "The application that sent you here is not known to this server.".to_owned(),
        ),
        Error::Internal(detail) => {
            tracing::error!(%detail, "internal error");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong on the server; try again later.".to_owned(),
            )
        }
        Error::AuditUnavailable | Error::Unavailable(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "The server cannot sign you in right now; try again later.".to_owned(),
        ),
        other => (
            StatusCode::BAD_REQUEST,
            format!("The sign-in request is not valid: {other}."),
        ),
    };
    message_page(status, "Sign-in request refused", &message)
}

/// A page with a title and a message, and no form.
fn message_page(status: StatusCode, title: &str, message: &str) -> Response {
    let body = format!(
        "<h1>{}</h1>\n<p role=\"alert\">{}</p>\n",
        escape(title),
        escape(message)
    );
    (status, Html(document(title, &body))).into_response()
}

/// The login form, every parameter of the request in a hidden field.
fn form_page(status: StatusCode, request: &Authorize, page: &FormPage<'_>) -> Response {
    let mut body = String::new();
    body.push_str("<h1>Sign in</h1>\n");
    body.push_str(&format!(
        "<p>to continue to <strong>{}</strong></p>\n",
        escape(&page.client.name)
    ));
    let described = match page.message {
        Some(message) => {
            body.push_str(&format!(
                "<p class=\"error\" id=\"message\" role=\"alert\">{}</p>\n",
                escape(message)
            ));
            " aria-describedby=\"message\""
        }
        None => "",
    };
    body.push_str(&format!(
        "<form method=\"post\" action=\"{PATH}\">\n\
         <input type=\"hidden\" name=\"{CSRF_FIELD}\" value=\"{}\">\n",
        escape(page.csrf)
    ));
    for (name, value) in request.fields() {
        body.push_str(&format!(
            "<input type=\"hidden\" name=\"{name}\" value=\"{}\">\n",
            escape(value)
        ));
    }
    // Shown again after a failure, the form starts at the password, the username kept.
    let (user_focus, password_focus) = if page.username.is_empty() {
        (" autofocus", "")
    } else {
        ("", " autofocus")
    };
    body.push_str(&format!(
        "<label for=\"username\">Username</label>\n\
         <input id=\"username\" name=\"username\" type=\"text\" autocomplete=\"username\" \
         autocapitalize=\"none\" spellcheck=\"false\" required{user_focus} value=\"{}\"{described}>\n\
         <label for=\"password\">Password</label>\n\
         <input id=\"password\" name=\"password\" type=\"password\" \
         autocomplete=\"current-password\" required{password_focus}{described}>\n",
        escape(page.username)
    ));
    if page.totp {
        // Not `required`: with no scope requested, the field shows when any scope the client
        // may ask for needs it, and the issuer decides once it knows the user's roles.
        body.push_str(
            "<label for=\"totp\">One-time code</label>\n\
             <input id=\"totp\" name=\"totp\" type=\"text\" inputmode=\"numeric\" \
             autocomplete=\"one-time-code\" pattern=\"[0-9]{6}\" maxlength=\"6\" \
             aria-describedby=\"totp-hint\">\n\
             <p class=\"hint\" id=\"totp-hint\">The six-digit code from your authenticator \
             app: this access needs a second factor.</p>\n",
        );
    }
    body.push_str("<button type=\"submit\">Sign in</button>\n</form>\n");
    (status, Html(document("Sign in", &body))).into_response()
}

/// A whole HTML document around `body`, with the page's only (inline) style.
fn document(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{} · Trias</title>\n<style>\n\
         body {{ font-family: system-ui, sans-serif; max-width: 24rem; margin: 3rem auto; padding: 0 1rem; }}\n\
         label {{ display: block; margin-top: 1rem; font-weight: 600; }}\n\
         input {{ display: block; width: 100%; box-sizing: border-box; padding: 0.5rem; font-size: 1rem; }}\n\
         button {{ margin-top: 1.5rem; padding: 0.5rem 1.5rem; font-size: 1rem; }}\n\
         .error {{ color: #a00; font-weight: 600; }}\n\
         .hint {{ font-size: 0.875rem; margin: 0.25rem 0 0; }}\n\
         </style>\n</head>\n<body>\n<main>\n{body}</main>\n</body>\n</html>\n",
        escape(title)
    )
}

/// Escapes text for an HTML element or a double-quoted attribute.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// A value quoted in an error message, cut to a readable length.
fn truncate(value: &str) -> String {
    value.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_element_and_attribute_contexts() {
        assert_eq!(
            escape(r#""><script>alert('x')</script>&"#),
            "&quot;&gt;&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;"
        );
    }

    #[test]
    fn waits_read_in_seconds_then_minutes() {
        assert_eq!(wait(1), "1 second");
        assert_eq!(wait(30), "30 seconds");
        assert_eq!(wait(121), "3 minutes");
    }

    #[test]
    fn csrf_needs_both_values_equal() {
        assert!(csrf_matches("abc", "abc"));
        assert!(!csrf_matches("abc", "abd"));
        assert!(!csrf_matches("", ""));
        assert!(!csrf_matches("abc", ""));
    }

    #[test]
    fn the_csrf_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; trias_csrf=tok; b=2"),
        );
        assert_eq!(cookie(&headers, CSRF_COOKIE), Some("tok"));
        assert_eq!(cookie(&headers, "missing"), None);
    }

    #[test]
    fn redirect_parameters_join_an_existing_query() {
        let response = redirect("https://app.example/cb?x=1#frag", &[("code", "a b&c")]);
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        assert_eq!(
            response.headers()[header::LOCATION],
            "https://app.example/cb?x=1&code=a%20b%26c"
        );
    }
}
