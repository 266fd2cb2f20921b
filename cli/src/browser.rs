//! `trias token --browser`: the authorization-code flow as a native app does it (RFC 8252).
//! The CLI listens on the client's loopback redirect URI, prints the issuer's login page
//! address, and waits for the browser to come back with the code; it accepts the answer only
//! with the `state` it sent (a forged or stale callback is refused) and the issuer's own `iss`
//! (RFC 9207, against mix-up), and redeems the code itself with its PKCE verifier.

use std::time::Duration;

use data_encoding::BASE64URL_NOPAD;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::remote::{CliError, usage};
use crate::token::TokenArgs;

/// How long the CLI waits for the browser.
const WAIT: Duration = Duration::from_secs(300);
/// The most of a callback request read: its request line carries the code.
const MAX_REQUEST: usize = 16 * 1024;

/// Where a loopback redirect URI listens: `host:port` and the path.
fn loopback(redirect_uri: &str) -> Result<(String, String), CliError> {
    let bad = || {
        usage(format!(
            "--redirect-uri {redirect_uri}: the browser login needs a loopback http URI such as http://127.0.0.1:7480/callback"
        ))
    };
    let rest = redirect_uri.strip_prefix("http://").ok_or_else(bad)?;
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    let (host, port) = authority.rsplit_once(':').ok_or_else(bad)?;
    if !matches!(host, "127.0.0.1" | "localhost" | "[::1]") || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    if path.contains('?') || path.contains('#') {
        return Err(bad());
    }
    Ok((authority.to_owned(), path.to_owned()))
}

/// Runs the browser login; returns the code and the PKCE verifier to redeem it with.
pub async fn sign_in(args: &TokenArgs, redirect_uri: &str) -> Result<(String, String), CliError> {
    let (authority, path) = loopback(redirect_uri)?;
    let listener = TcpListener::bind(&authority).await.map_err(|e| {
        usage(format!(
            "cannot listen on {authority} for the login's redirect: {e}"
        ))
    })?;
    let (verifier, challenge) = crate::token::pkce()?;
    let mut state = [0u8; 16];
    SystemRandom::new()
        .fill(&mut state)
        .map_err(|_| usage("no randomness for the login's state"))?;
    let state = BASE64URL_NOPAD.encode(&state);
    let mut params = vec![
        ("response_type", "code"),
        ("client_id", args.client.client_id.as_str()),
        ("redirect_uri", redirect_uri),
        ("state", state.as_str()),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ];
    if !args.scope.is_empty() {
        params.push(("scope", args.scope.as_str()));
    }
    if !args.resource.is_empty() {
        params.push(("resource", args.resource.as_str()));
    }
    let query = serde_urlencoded::to_string(&params)
        .map_err(|e| usage(format!("cannot build the login address: {e}")))?;
    let issuer = args.issuer_url.trim_end_matches('/');
    eprintln!("Sign in in a browser at:\n  {issuer}/oauth2/authorize?{query}");
    eprintln!("(waiting for the redirect to {redirect_uri})");

    let callback = tokio::time::timeout(WAIT, wait_for_callback(&listener, &path))
        .await
        .map_err(|_| usage("no login within 5 minutes"))??;
    let get = |key: &str| {
        callback
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    if get("state") != Some(state.as_str()) {
        return Err(CliError::Refused(
            "the redirect does not carry this login's state: ignored (a forged or stale callback)"
                .into(),
        ));
    }
    if let Some(iss) = get("iss")
        && iss != issuer
    {
        return Err(CliError::Refused(format!(
            "the redirect names issuer {iss}, not {issuer}: refused (RFC 9207 mix-up defence)"
        )));
    }
    if let Some(error) = get("error") {
        let description = get("error_description").unwrap_or_default();
        return Err(CliError::Refused(format!("issuer: {error}: {description}")));
    }
    let code = get("code")
        .filter(|code| !code.is_empty())
        .ok_or_else(|| CliError::Refused("the redirect carries no code".into()))?;
    Ok((code.to_owned(), verifier))
}

/// Serves the loopback listener until a request for `path` arrives; returns its query.
async fn wait_for_callback(
    listener: &TcpListener,
    path: &str,
) -> Result<Vec<(String, String)>, CliError> {
    loop {
        let (mut stream, _) = listener
            .accept()
            .await
            .map_err(|e| usage(format!("the redirect listener failed: {e}")))?;
        let Some(target) = request_target(&mut stream).await else {
            let _ = respond(&mut stream, "400 Bad Request", "Not a login redirect.").await;
            continue;
        };
        let (request_path, query) = target.split_once('?').unwrap_or((&target, ""));
        if request_path != path {
            // A browser also asks for /favicon.ico and the like.
            let _ = respond(&mut stream, "404 Not Found", "Not found.").await;
            continue;
        }
        let Ok(pairs) = serde_urlencoded::from_str::<Vec<(String, String)>>(query) else {
            let _ = respond(&mut stream, "400 Bad Request", "Not a login redirect.").await;
            continue;
        };
        let message = if pairs.iter().any(|(k, _)| k == "code") {
            "Signed in. You can close this window and go back to the terminal."
        } else {
            "The login did not complete; the terminal says why."
        };
        let _ = respond(&mut stream, "200 OK", message).await;
        return Ok(pairs);
    }
}

/// The target of a `GET` request (its path and query), read within a size cap.
async fn request_target(stream: &mut TcpStream) -> Option<String> {
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buffer.windows(4).any(|w| w == b"\r\n\r\n") {
        if buffer.len() > MAX_REQUEST {
            return None;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            break;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8(buffer).ok()?;
    let line = head.lines().next()?;
    let mut parts = line.split(' ');
    match (parts.next(), parts.next()) {
        (Some("GET"), Some(target)) => Some(target.to_owned()),
        _ => None,
    }
}

async fn respond(stream: &mut TcpStream, status: &str, message: &str) -> std::io::Result<()> {
    let body = format!(
        "<!doctype html><html lang=\"en\"><meta charset=\"utf-8\"><title>Trias</title><p>{message}</p></html>"
    );
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nReferrer-Policy: no-referrer\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::loopback;

    #[test]
    fn only_loopback_http_redirects_are_listened_on() {
        assert_eq!(
            loopback("http://127.0.0.1:7480/callback").unwrap(),
            ("127.0.0.1:7480".into(), "/callback".into())
        );
        assert_eq!(
            loopback("http://localhost:9000").unwrap(),
            ("localhost:9000".into(), "/".into())
        );
        for bad in [
            "https://127.0.0.1:7480/callback",
            "http://example.com:7480/callback",
            "http://127.0.0.1/callback",
            "http://127.0.0.1:99999/callback",
            "http://127.0.0.1:7480/callback?x=1",
            "app://callback",
        ] {
            assert!(loopback(bad).is_err(), "{bad}");
        }
    }
}
