//! The issuer's login page (`/oauth2/authorize`): the authorization-code flow as a browser
//! and a standard OAuth client see it — refusals that must not redirect, errors that go back
//! to the client, the CSRF check, the generic failure message, escaping, the TOTP step-up —
//! first over plain HTTP, then in a real headless Chromium through WebDriver.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::time::Duration;

use axum::http::Uri;
use reqwest::Url;
use reqwest::header::HeaderMap;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use trias_policy::GrantType;
use trias_proto::v1::EventKind;
use trias_tests::webdriver::{Browser, browser_binaries};
use trias_tests::{
    Backend, IssuerHandle, IssuerOptions, REDIRECT_URIS, assert_no_bearer_values, claims,
    pkce_pair, start_issuer,
};

use crate::issuer_login::wrong_code;

const PASSWORD: &str = "correct horse battery";
const STATE: &str = "opaque state 42/&=";
/// The page's one message for any wrong credential.
const LOGIN_FAILED: &str = "The username, password or one-time code is not correct.";
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'";

type Params = Vec<(&'static str, String)>;

/// An authorization request for `client_id` at the first registered redirect URI.
fn request(client_id: &str, challenge: &str, scope: &str) -> Params {
    vec![
        ("response_type", "code".into()),
        ("client_id", client_id.into()),
        ("redirect_uri", REDIRECT_URIS[0].into()),
        ("scope", scope.into()),
        ("state", STATE.into()),
        ("code_challenge", challenge.into()),
        ("code_challenge_method", "S256".into()),
    ]
}

/// `params` with `name` set to `value` (added if absent).
fn with(params: &Params, name: &'static str, value: &str) -> Params {
    let mut params = without(params, name);
    params.push((name, value.into()));
    params
}

fn without(params: &Params, name: &str) -> Params {
    params.iter().filter(|(n, _)| *n != name).cloned().collect()
}

/// A response of the page: status, headers and the body as text.
#[derive(Debug)]
struct Page {
    status: u16,
    headers: HeaderMap,
    text: String,
}

impl Page {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The CSRF cookie the page set.
    fn csrf_cookie(&self) -> String {
        let cookie = self.header("set-cookie");
        let value = cookie.strip_prefix("trias_csrf=").expect(cookie);
        value.split(';').next().unwrap().to_owned()
    }

    /// The hidden fields of the form, unescaped: what a browser posts back.
    fn hidden_fields(&self) -> Vec<(String, String)> {
        let mut fields = Vec::new();
        for piece in self.text.split("<input type=\"hidden\" name=\"").skip(1) {
            let (name, rest) = piece.split_once("\" value=\"").unwrap();
            let (value, _) = rest.split_once('"').unwrap();
            fields.push((name.to_owned(), unescape(value)));
        }
        fields
    }

    fn has_totp_field(&self) -> bool {
        self.text.contains("name=\"totp\"")
    }

    /// The query of the redirect, after checking it goes to `redirect_uri`.
    fn redirect_query(&self, redirect_uri: &str) -> Vec<(String, String)> {
        assert_eq!(self.status, 303, "{}", self.text);
        let location = Url::parse(self.header("location")).unwrap();
        let target = format!(
            "{}{}",
            location.origin().ascii_serialization(),
            location.path()
        );
        assert_eq!(target, redirect_uri);
        location.query_pairs().into_owned().collect()
    }
}

fn unescape(text: &str) -> String {
    text.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

fn param<'a>(query: &'a [(String, String)], name: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// An HTTP client that, like a browser's first hop, follows no redirect.
struct PageClient {
    http: reqwest::Client,
    base: String,
}

impl PageClient {
    fn new(issuer: &IssuerHandle) -> PageClient {
        PageClient {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: issuer.http_base(),
        }
    }

    async fn get(&self, params: &Params) -> Page {
        let url =
            Url::parse_with_params(&format!("{}/oauth2/authorize", self.base), params).unwrap();
        page(self.http.get(url)).await
    }

    /// POSTs the form with `cookie` as the CSRF cookie (if any).
    async fn post(&self, cookie: Option<&str>, form: &[(String, String)]) -> Page {
        let mut request = self
            .http
            .post(format!("{}/oauth2/authorize", self.base))
            .form(form);
        if let Some(cookie) = cookie {
            request = request.header("cookie", format!("trias_csrf={cookie}"));
        }
        page(request).await
    }

    /// Submits the form of `page` as a browser would, with its cookie and these credentials.
    async fn submit(&self, page: &Page, cookie: &str, credentials: &[(&str, &str)]) -> Page {
        let mut form = page.hidden_fields();
        form.extend(
            credentials
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned())),
        );
        self.post(Some(cookie), &form).await
    }
}

async fn page(request: reqwest::RequestBuilder) -> Page {
    let response = request.send().await.unwrap();
    Page {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        text: response.text().await.unwrap(),
    }
}

/// Redeems a code at the token endpoint over HTTP; returns the JSON reply.
async fn redeem(
    issuer: &IssuerHandle,
    client: (&str, &str),
    code: &str,
    verifier: &str,
    redirect_uri: &str,
) -> serde_json::Value {
    let reply = issuer
        .post_form(
            "/oauth2/token",
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("code_verifier", verifier),
                ("redirect_uri", redirect_uri),
            ],
            Some(client),
        )
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    reply.body
}

async fn login_events(issuer: &IssuerHandle) -> usize {
    issuer.events_of(EventKind::LoginSucceeded).await.len()
        + issuer.events_of(EventKind::LoginFailed).await.len()
}

both_backends!(a_login_through_the_page_redeems_for_a_token);
async fn a_login_through_the_page_redeems_for_a_token(backend: Backend) {
    let Some(issuer) = start_issuer(IssuerOptions::on(backend)).await else {
        return;
    };
    let base = issuer.http_base();
    let metadata = issuer.get("/.well-known/oauth-authorization-server").await;
    assert_eq!(
        metadata.body["authorization_endpoint"],
        format!("{base}/oauth2/authorize")
    );
    assert_eq!(
        metadata.body["authorization_response_iss_parameter_supported"],
        true
    );
    let (alice, _) = issuer.user("alice", PASSWORD, &["clerk"], false).await;
    let frontend = issuer
        .frontend(&["payments:read", "payments:create"], false)
        .await;
    let secret = frontend.secret.clone().unwrap();
    let client = PageClient::new(&issuer);
    let (verifier, challenge) = pkce_pair();

    let form = client
        .get(&request(&frontend.client_id, &challenge, "payments:create"))
        .await;
    assert_eq!(form.status, 200);
    assert!(form.header("content-type").starts_with("text/html"));
    assert!(form.text.contains("name=\"username\""));
    assert!(form.text.contains("type=\"password\""));
    assert!(
        !form.has_totp_field(),
        "payments:create needs no second factor"
    );
    let cookie = form.csrf_cookie();
    let signed_in = client
        .submit(
            &form,
            &cookie,
            &[("username", "alice"), ("password", PASSWORD)],
        )
        .await;
    let query = signed_in.redirect_query(REDIRECT_URIS[0]);
    let code = param(&query, "code").unwrap();
    assert_eq!(param(&query, "state"), Some(STATE));
    assert_eq!(param(&query, "iss"), Some(base.as_str()), "RFC 9207");

    let tokens = redeem(
        &issuer,
        (&frontend.client_id, &secret),
        code,
        &verifier,
        REDIRECT_URIS[0],
    )
    .await;
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(tokens["scope"], "payments:create");
    let claims = claims(access);
    assert_eq!(claims["sub"], alice.as_str());
    assert_eq!(claims["scope"], "payments:create");
    assert_eq!(claims["acr"], "pwd");
    assert_eq!(claims["client_id"], frontend.client_id.as_str());
    let logins = issuer.events_of(EventKind::LoginSucceeded).await;
    assert_eq!(logins.len(), 1);
    assert_eq!(logins[0].subject, alice);
    assert_no_bearer_values(
        &issuer.events().await,
        &[PASSWORD, code, &verifier, &cookie, access],
    );
    issuer.stop().await;
}

both_backends!(a_bad_client_or_redirect_uri_gets_a_page_and_no_redirect);
async fn a_bad_client_or_redirect_uri_gets_a_page_and_no_redirect(backend: Backend) {
    let Some(issuer) = start_issuer(IssuerOptions::on(backend)).await else {
        return;
    };
    issuer.user("alice", PASSWORD, &["clerk"], false).await;
    let frontend = issuer.frontend(&["payments:read"], false).await;
    let client = PageClient::new(&issuer);
    let (_, challenge) = pkce_pair();
    let good = request(&frontend.client_id, &challenge, "payments:read");
    let near_miss = format!("{}/", REDIRECT_URIS[0]);
    for (what, params) in [
        ("an unknown client", with(&good, "client_id", "c-nobody")),
        ("no client", without(&good, "client_id")),
        (
            "an unregistered redirect_uri",
            with(&good, "redirect_uri", "https://evil.example/callback"),
        ),
        (
            "a redirect_uri that only starts like a registered one",
            with(&good, "redirect_uri", &near_miss),
        ),
        ("no redirect_uri", without(&good, "redirect_uri")),
    ] {
        let page = client.get(&params).await;
        assert_eq!(page.status, 400, "{what}: {}", page.text);
        assert_eq!(page.header("location"), "", "{what}: never redirected");
        assert!(
            page.header("content-type").starts_with("text/html"),
            "{what}"
        );
        assert!(!page.text.contains("<form"), "{what}");
    }
    // A repeated parameter: which redirect_uri would be the one? Neither.
    let url = format!(
        "{}/oauth2/authorize?client_id={}&redirect_uri=a&redirect_uri=b",
        issuer.http_base(),
        frontend.client_id
    );
    let repeated = page(reqwest::Client::new().get(url)).await;
    assert_eq!(repeated.status, 400);
    assert_eq!(repeated.header("location"), "");

    // The POST trusts the hidden fields no more than the query.
    let form = client.get(&good).await;
    let cookie = form.csrf_cookie();
    let mut fields: Vec<(String, String)> = form
        .hidden_fields()
        .into_iter()
        .filter(|(n, _)| n != "redirect_uri")
        .collect();
    fields.push((
        "redirect_uri".into(),
        "https://evil.example/callback".into(),
    ));
    fields.push(("username".into(), "alice".into()));
    fields.push(("password".into(), PASSWORD.into()));
    let posted = client.post(Some(&cookie), &fields).await;
    assert_eq!(posted.status, 400, "{}", posted.text);
    assert_eq!(posted.header("location"), "");
    assert!(issuer.events_of(EventKind::LoginSucceeded).await.is_empty());
    issuer.stop().await;
}

both_backends!(other_errors_go_back_to_the_client_with_the_state);
async fn other_errors_go_back_to_the_client_with_the_state(backend: Backend) {
    let Some(issuer) = start_issuer(IssuerOptions::on(backend)).await else {
        return;
    };
    let frontend = issuer.frontend(&["payments:read"], true).await;
    let (service, _) = issuer.service_client(&["clerk"], &["payments:read"]).await;
    let client = PageClient::new(&issuer);
    let (_, challenge) = pkce_pair();
    let good = request(&frontend.client_id, &challenge, "payments:read");
    for (params, error) in [
        (without(&good, "code_challenge"), "invalid_request"),
        (
            with(&good, "code_challenge", "too-short"),
            "invalid_request",
        ),
        (without(&good, "code_challenge_method"), "invalid_request"),
        (
            with(&good, "code_challenge_method", "plain"),
            "invalid_request",
        ),
        (without(&good, "response_type"), "invalid_request"),
        (
            with(&good, "response_type", "token"),
            "unsupported_response_type",
        ),
        (with(&good, "scope", "payments:nothing"), "invalid_scope"),
        (
            with(&good, "resource", "https://unknown.example"),
            "invalid_target",
        ),
        (
            request(&service, &challenge, "payments:read"),
            "unauthorized_client",
        ),
    ] {
        let page = client.get(&params).await;
        let query = page.redirect_query(REDIRECT_URIS[0]);
        assert_eq!(param(&query, "error"), Some(error), "{params:?}");
        assert_eq!(param(&query, "state"), Some(STATE), "{params:?}");
        assert_eq!(param(&query, "iss"), Some(issuer.http_base().as_str()));
        assert!(param(&query, "error_description").is_some());
        assert_eq!(param(&query, "code"), None);
    }
    // Without a state, none comes back.
    let page = client
        .get(&without(&without(&good, "code_challenge"), "state"))
        .await;
    let query = page.redirect_query(REDIRECT_URIS[0]);
    assert_eq!(param(&query, "error"), Some("invalid_request"));
    assert_eq!(param(&query, "state"), None);
    issuer.stop().await;
}

both_backends!(a_post_without_a_matching_csrf_token_attempts_no_login);
async fn a_post_without_a_matching_csrf_token_attempts_no_login(backend: Backend) {
    let Some(issuer) = start_issuer(IssuerOptions::on(backend)).await else {
        return;
    };
    issuer.user("alice", PASSWORD, &["clerk"], false).await;
    let frontend = issuer.frontend(&["payments:read"], true).await;
    let client = PageClient::new(&issuer);
    let (_, challenge) = pkce_pair();
    let form = client
        .get(&request(&frontend.client_id, &challenge, "payments:read"))
        .await;
    let cookie = form.csrf_cookie();
    let mut fields = form.hidden_fields();
    fields.push(("username".into(), "alice".into()));
    fields.push(("password".into(), PASSWORD.into()));
    let with_token = |token: Option<&str>| -> Vec<(String, String)> {
        let mut fields: Vec<(String, String)> = fields
            .iter()
            .filter(|(n, _)| n != "csrf")
            .cloned()
            .collect();
        if let Some(token) = token {
            fields.push(("csrf".into(), token.into()));
        }
        fields
    };
    let (_, other) = pkce_pair();

    for (what, cookie, fields) in [
        ("no cookie", None, with_token(Some(&cookie))),
        (
            "a mismatched token",
            Some(cookie.as_str()),
            with_token(Some(&other)),
        ),
        ("no token", Some(cookie.as_str()), with_token(None)),
        (
            "a token that is not the cookie",
            Some(other.as_str()),
            with_token(Some(&cookie)),
        ),
    ] {
        let page = client.post(cookie, &fields).await;
        assert_eq!(page.status, 403, "{what}: {}", page.text);
        assert_eq!(page.header("location"), "", "{what}");
        assert!(
            page.header("content-type").starts_with("text/html"),
            "{what}"
        );
    }
    assert_eq!(login_events(&issuer).await, 0, "no login was attempted");

    // The same form with its cookie signs in: only the CSRF check refused it.
    let page = client.post(Some(&cookie), &with_token(Some(&cookie))).await;
    let query = page.redirect_query(REDIRECT_URIS[0]);
    assert!(param(&query, "code").is_some());
    issuer.stop().await;
}

both_backends!(a_wrong_credential_shows_the_form_again_with_one_generic_message);
async fn a_wrong_credential_shows_the_form_again_with_one_generic_message(backend: Backend) {
    let Some(issuer) = start_issuer(IssuerOptions::on(backend)).await else {
        return;
    };
    issuer.user("alice", PASSWORD, &["clerk"], false).await;
    let frontend = issuer.frontend(&["payments:read"], true).await;
    let client = PageClient::new(&issuer);
    let (_, challenge) = pkce_pair();
    let form = client
        .get(&request(&frontend.client_id, &challenge, "payments:read"))
        .await;
    let cookie = form.csrf_cookie();

    let wrong = "wrong password 7c1e";
    let mut retries = Vec::new();
    for username in ["alice", "nobody"] {
        let page = client
            .submit(
                &form,
                &cookie,
                &[("username", username), ("password", wrong)],
            )
            .await;
        assert_eq!(page.status, 401, "{username}: {}", page.text);
        assert_eq!(page.header("location"), "");
        assert!(page.text.contains(LOGIN_FAILED), "{}", page.text);
        assert!(
            page.text.contains(&format!("value=\"{username}\"")),
            "the username is kept"
        );
        assert!(!page.text.contains(wrong), "the password is never echoed");
        assert!(!page.text.contains("code="));
        retries.push(page);
    }
    let [known, unknown] = [&retries[0], &retries[1]];
    assert_eq!(
        known.text.replace("alice", "nobody"),
        unknown.text,
        "a wrong password and an unknown user read the same"
    );
    // An empty password is not a login attempt at all.
    let empty = client
        .submit(&form, &cookie, &[("username", "alice")])
        .await;
    assert_eq!(empty.status, 400);
    assert!(empty.text.contains("Enter your username and password."));
    assert_eq!(issuer.events_of(EventKind::LoginFailed).await.len(), 2);

    // The form shown again still works.
    let page = client
        .submit(
            known,
            &cookie,
            &[("username", "alice"), ("password", PASSWORD)],
        )
        .await;
    let query = page.redirect_query(REDIRECT_URIS[0]);
    assert!(param(&query, "code").is_some());
    issuer.stop().await;
}

both_backends!(hostile_values_are_escaped_and_every_page_is_locked_down);
async fn hostile_values_are_escaped_and_every_page_is_locked_down(backend: Backend) {
    let Some(issuer) = start_issuer(IssuerOptions::on(backend)).await else {
        return;
    };
    issuer.user("alice", PASSWORD, &["clerk"], false).await;
    let frontend = issuer.frontend(&["payments:read"], true).await;
    let client = PageClient::new(&issuer);
    let (_, challenge) = pkce_pair();
    let hostile = "\"><script>alert(1)</script>";
    let params = with(
        &request(&frontend.client_id, &challenge, "payments:read"),
        "state",
        hostile,
    );
    let form = client.get(&params).await;
    assert_eq!(form.status, 200);
    assert!(!form.text.contains("<script>"), "{}", form.text);
    assert!(
        form.text
            .contains("value=\"&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;\""),
        "{}",
        form.text
    );
    let set_cookie = form.header("set-cookie");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/oauth2/authorize"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    let cookie = form.csrf_cookie();
    assert_eq!(cookie.len(), 43, "32 random bytes, base64url");

    let retry = client
        .submit(
            &form,
            &cookie,
            &[("username", "<b>alice</b>"), ("password", "x")],
        )
        .await;
    assert_eq!(retry.status, 401);
    assert!(!retry.text.contains("<script>") && !retry.text.contains("<b>"));
    assert!(retry.text.contains("&lt;b&gt;alice&lt;/b&gt;"));

    // The state goes back to the client exactly as it came.
    let redirected = client
        .submit(
            &form,
            &cookie,
            &[("username", "alice"), ("password", PASSWORD)],
        )
        .await;
    let query = redirected.redirect_query(REDIRECT_URIS[0]);
    assert_eq!(param(&query, "state"), Some(hostile));

    let refused = client.get(&with(&params, "client_id", "c-nobody")).await;
    let forbidden = client.post(None, &form.hidden_fields()).await;
    let error_redirect = client.get(&without(&params, "code_challenge")).await;
    for (what, page, status) in [
        ("the form", &form, 200),
        ("the form again", &retry, 401),
        ("the redirect", &redirected, 303),
        ("the error redirect", &error_redirect, 303),
        ("the error page", &refused, 400),
        ("the csrf refusal", &forbidden, 403),
    ] {
        assert_eq!(page.status, status, "{what}");
        assert_eq!(page.header("cache-control"), "no-store", "{what}");
        assert_eq!(page.header("content-security-policy"), CSP, "{what}");
        assert_eq!(page.header("x-frame-options"), "DENY", "{what}");
        assert_eq!(page.header("referrer-policy"), "no-referrer", "{what}");
        assert_eq!(page.header("x-content-type-options"), "nosniff", "{what}");
    }
    issuer.stop().await;
}

both_backends!(an_mfa_scope_asks_for_the_one_time_code_and_checks_it);
async fn an_mfa_scope_asks_for_the_one_time_code_and_checks_it(backend: Backend) {
    let Some(issuer) = start_issuer(IssuerOptions::on(backend)).await else {
        return;
    };
    let admin = issuer.admin("root").await;
    let secret = admin.frontend.secret.clone().unwrap();
    let client = PageClient::new(&issuer);
    let (verifier, challenge) = pkce_pair();
    let params = with(
        &request(&admin.frontend.client_id, &challenge, "admin:users"),
        "resource",
        "issuer-admin",
    );
    let form = client.get(&params).await;
    assert_eq!(form.status, 200);
    assert!(form.has_totp_field(), "admin:users needs acr mfa");
    assert!(form.text.contains("autocomplete=\"one-time-code\""));
    let cookie = form.csrf_cookie();
    let password = ("password", admin.password.as_str());
    let username = ("username", admin.username.as_str());

    let totp = issuer.totp(&admin.totp_secret);
    for (what, credentials) in [
        ("no code", vec![username, password]),
        (
            "a wrong code",
            vec![username, password, ("totp", &wrong_code(&totp))],
        ),
        (
            "a right code with a wrong password",
            vec![username, ("password", "wrong"), ("totp", &totp)],
        ),
    ] {
        let page = client.submit(&form, &cookie, &credentials).await;
        assert_eq!(page.status, 401, "{what}: {}", page.text);
        assert!(page.text.contains(LOGIN_FAILED), "{what}");
        assert!(page.has_totp_field(), "{what}");
    }
    assert!(issuer.events_of(EventKind::LoginSucceeded).await.is_empty());

    let page = client
        .submit(&form, &cookie, &[username, password, ("totp", &totp)])
        .await;
    let query = page.redirect_query(REDIRECT_URIS[0]);
    let tokens = redeem(
        &issuer,
        (&admin.frontend.client_id, &secret),
        param(&query, "code").unwrap(),
        &verifier,
        REDIRECT_URIS[0],
    )
    .await;
    let claims = claims(tokens["access_token"].as_str().unwrap());
    assert_eq!(claims["acr"], "mfa");
    assert_eq!(claims["aud"], "issuer-admin");
    assert_eq!(claims["scope"], "admin:users");
    issuer.stop().await;
}

/// The client's redirect URI, served by the test: answers "ok" and hands over each query.
struct Callback {
    uri: String,
    queries: mpsc::UnboundedReceiver<String>,
    server: tokio::task::JoinHandle<()>,
}

impl Callback {
    async fn start() -> Callback {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri = format!("http://{}/callback", listener.local_addr().unwrap());
        let (tx, queries) = mpsc::unbounded_channel();
        let app = axum::Router::new().route(
            "/callback",
            axum::routing::get(move |uri: Uri| {
                let _ = tx.send(uri.query().unwrap_or("").to_owned());
                async { "ok" }
            }),
        );
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Callback {
            uri,
            queries,
            server,
        }
    }

    /// The query of the next request the browser makes to the redirect URI.
    async fn next(&mut self) -> Vec<(String, String)> {
        let query = tokio::time::timeout(Duration::from_secs(20), self.queries.recv())
            .await
            .expect("the browser reaches the redirect URI")
            .unwrap();
        Url::parse(&format!("http://x/?{query}"))
            .unwrap()
            .query_pairs()
            .into_owned()
            .collect()
    }
}

impl Drop for Callback {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_browser_signs_in_through_the_login_page() {
    let Some(binaries) = browser_binaries() else {
        return;
    };
    let issuer = start_issuer(IssuerOptions::default()).await.unwrap();
    let base = issuer.http_base();
    let mut callback = Callback::start().await;
    let (_, totp_secret) = issuer.user("root", PASSWORD, &["admin"], true).await;
    let totp_secret = totp_secret.unwrap();
    let (client_id, secret) = issuer
        .client_redirecting_to(
            &[GrantType::AuthorizationCode],
            &["admin:users"],
            false,
            &[&callback.uri],
        )
        .await;
    let secret = secret.unwrap();
    let (verifier, challenge) = pkce_pair();
    let params = [
        ("response_type", "code"),
        ("client_id", &client_id),
        ("redirect_uri", &callback.uri),
        ("scope", "admin:users"),
        ("resource", "issuer-admin"),
        ("state", STATE),
        ("code_challenge", &challenge),
        ("code_challenge_method", "S256"),
    ];
    let authorize = Url::parse_with_params(&format!("{base}/oauth2/authorize"), params).unwrap();

    let browser = Browser::start(&binaries).await;
    browser.goto(authorize.as_str()).await;
    let totp = issuer.totp(&totp_secret);
    browser
        .fill(&browser.element("#username").await, "root")
        .await;
    browser
        .fill(&browser.element("#password").await, "not the password")
        .await;
    browser.fill(&browser.element("#totp").await, &totp).await;
    browser
        .click(&browser.element("button[type=submit]").await)
        .await;

    // A wrong password: the browser stays on the form, which says so and keeps the username.
    assert!(
        browser
            .url()
            .await
            .starts_with(&format!("{base}/oauth2/authorize")),
        "{}",
        browser.url().await
    );
    let message = browser.element("#message").await;
    assert_eq!(browser.text(&message).await, LOGIN_FAILED);
    let username = browser.element("#username").await;
    assert_eq!(browser.property(&username, "value").await, "root");
    assert_eq!(
        browser
            .property(&browser.element("#password").await, "value")
            .await,
        ""
    );
    assert!(callback.queries.try_recv().is_err(), "no redirect yet");

    // The right password on the form shown again (its CSRF token and cookie still match).
    browser
        .fill(&browser.element("#password").await, PASSWORD)
        .await;
    browser.fill(&browser.element("#totp").await, &totp).await;
    browser
        .click(&browser.element("button[type=submit]").await)
        .await;
    let query = callback.next().await;
    assert!(browser.url().await.starts_with(&callback.uri));
    assert_eq!(param(&query, "state"), Some(STATE));
    assert_eq!(param(&query, "iss"), Some(base.as_str()));
    let code = param(&query, "code").unwrap();
    let tokens = redeem(
        &issuer,
        (&client_id, &secret),
        code,
        &verifier,
        &callback.uri,
    )
    .await;
    let claims = claims(tokens["access_token"].as_str().unwrap());
    assert_eq!(claims["scope"], "admin:users");
    assert_eq!(claims["acr"], "mfa");

    browser.close().await;
    issuer.stop().await;
}
