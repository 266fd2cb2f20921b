//! `trias token`, `trias revoke` and `trias check`: what a client and a backend do with the
//! suite, from the command line. Tokens go to stdout alone (or as JSON with `--json`), so
//! `T=$(trias token ...)` works in scripts; everything else goes to stderr.

use std::io::{BufRead, IsTerminal, Write};

use clap::Args;
use data_encoding::BASE64URL_NOPAD;
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::json;
use trias_proto::v1::issuer_client::IssuerClient;
use trias_proto::v1::validator_client::ValidatorClient;
use trias_proto::v1::{CheckRequest, GrantType, LoginRequest, Reason, RevokeRequest, TokenRequest};

use crate::remote::{CliError, Services, oauth_error, usage};

/// The OAuth client a token request or revocation is made as.
#[derive(Debug, Clone, Args)]
pub struct Client {
    /// The OAuth client (the one asking for the token, or the one it was issued to).
    #[arg(long, env = "TRIAS_CLIENT_ID", value_name = "ID")]
    pub client_id: String,
    /// The client's secret (confidential clients: client_credentials, refresh, revocation).
    #[arg(
        long,
        env = "TRIAS_CLIENT_SECRET",
        hide_env_values = true,
        allow_hyphen_values = true,
        value_name = "SECRET"
    )]
    pub client_secret: Option<String>,
}

/// `trias token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(flatten)]
    pub services: Services,
    #[command(flatten)]
    pub client: Client,
    /// Space-separated scopes; empty asks for every scope the subject may have.
    #[arg(long, default_value = "")]
    pub scope: String,
    /// The audience (RFC 8707 resource); empty takes the policy's default.
    #[arg(long, default_value = "")]
    pub resource: String,
    /// Log in as this user (authorization code with PKCE, the CLI acting as the login
    /// frontend): the password comes from the terminal without echo, or from stdin with
    /// `--password-stdin`; `--totp` gives the one-time code when the scope needs MFA.
    #[arg(long, value_name = "USERNAME", conflicts_with = "refresh_token")]
    pub login: Option<String>,
    /// Log in through the issuer's login page in a browser (authorization code with PKCE,
    /// RFC 8252 for native apps): the CLI prints the page's address and waits on the
    /// loopback redirect URI (`--redirect-uri http://127.0.0.1:PORT/PATH`) for the code.
    #[arg(long, conflicts_with_all = ["login", "refresh_token"])]
    pub browser: bool,
    /// The issuer's HTTP address, where the login page is (`--browser`).
    #[arg(
        long,
        env = "TRIAS_ISSUER_URL",
        default_value = "http://127.0.0.1:7402",
        value_name = "URL"
    )]
    pub issuer_url: String,
    /// Read the password from the first line of stdin.
    #[arg(long, requires = "login")]
    pub password_stdin: bool,
    /// The six-digit one-time code (RFC 6238) for a scope that needs `acr=mfa`; asked for on
    /// the terminal when the issuer needs it and none was given.
    #[arg(long, requires = "login", value_name = "CODE")]
    pub totp: Option<String>,
    /// The client's registered redirect URI (the code is never sent there: the CLI redeems it).
    #[arg(long, env = "TRIAS_REDIRECT_URI", value_name = "URI")]
    pub redirect_uri: Option<String>,
    /// Exchange this refresh token (it is spent: use the new one printed with `--json`).
    #[arg(
        long,
        hide_env_values = true,
        allow_hyphen_values = true,
        value_name = "TOKEN"
    )]
    pub refresh_token: Option<String>,
    /// Print the whole response as JSON (with the refresh token, expiry, scope, audience).
    #[arg(long)]
    pub json: bool,
}

/// `trias revoke`.
#[derive(Debug, Args)]
pub struct RevokeArgs {
    #[command(flatten)]
    pub services: Services,
    /// The access or refresh token to revoke (RFC 7009).
    #[arg(
        long,
        hide_env_values = true,
        allow_hyphen_values = true,
        value_name = "TOKEN"
    )]
    pub token: String,
    #[command(flatten)]
    pub client: Client,
}

/// `trias check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub services: Services,
    /// The access token to check.
    #[arg(
        long,
        env = "TRIAS_TOKEN",
        hide_env_values = true,
        allow_hyphen_values = true,
        value_name = "TOKEN"
    )]
    pub token: String,
    /// The action, as the policy names it at the audience (e.g. `payment.approve`).
    #[arg(long)]
    pub action: String,
    /// The object acted upon (e.g. `payment/7`): dual-control rules are kept per object.
    #[arg(long, default_value = "")]
    pub resource: String,
    /// Check as this backend: the CLI presents the backend's certificate from the PKI
    /// directory, and the validator decides for the audience bound to it. A check counts
    /// like the backend's own (it is recorded, and an allowed dual-control action is
    /// remembered).
    #[arg(long = "as", value_name = "BACKEND")]
    pub backend: String,
    /// Print the decision as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Gets a token and prints it.
pub async fn token(args: TokenArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let channel = args
        .services
        .channel("issuer", &args.services.issuer, "cli")
        .await?;
    let mut issuer = IssuerClient::new(channel);
    let request = match (&args.login, &args.refresh_token) {
        (None, None) if args.browser => {
            let redirect_uri = args.redirect_uri.clone().ok_or_else(|| {
                usage("--browser needs --redirect-uri (the client's loopback redirect URI)")
            })?;
            let (code, verifier) = crate::browser::sign_in(&args, &redirect_uri).await?;
            TokenRequest {
                grant_type: GrantType::AuthorizationCode.into(),
                client_id: args.client.client_id.clone(),
                client_secret: args.client.client_secret.clone().unwrap_or_default(),
                code,
                code_verifier: verifier,
                redirect_uri,
                ..TokenRequest::default()
            }
        }
        (Some(username), _) => {
            let redirect_uri = args.redirect_uri.clone().ok_or_else(|| {
                usage("--login needs --redirect-uri (the client's registered redirect URI)")
            })?;
            let password = read_password(args.password_stdin, username)?;
            let (verifier, challenge) = pkce()?;
            let mut login = LoginRequest {
                client_id: args.client.client_id.clone(),
                redirect_uri: redirect_uri.clone(),
                code_challenge: challenge,
                code_challenge_method: "S256".into(),
                scope: args.scope.clone(),
                resource: args.resource.clone(),
                username: username.clone(),
                password,
                totp: args.totp.clone().unwrap_or_default(),
            };
            let code = match issuer.login(login.clone()).await {
                Ok(response) => response.into_inner().code,
                Err(status)
                    if args.totp.is_none()
                        && oauth_error(&status).as_deref() == Some("mfa_required") =>
                {
                    login.totp = prompt("one-time code: ")?;
                    issuer
                        .login(login)
                        .await
                        .map_err(|s| CliError::from_status("issuer", &s))?
                        .into_inner()
                        .code
                }
                Err(status) => return Err(CliError::from_status("issuer", &status)),
            };
            TokenRequest {
                grant_type: GrantType::AuthorizationCode.into(),
                client_id: args.client.client_id.clone(),
                client_secret: args.client.client_secret.clone().unwrap_or_default(),
                code,
                code_verifier: verifier,
                redirect_uri,
                ..TokenRequest::default()
            }
        }
        (None, Some(refresh)) => TokenRequest {
            grant_type: GrantType::RefreshToken.into(),
            client_id: args.client.client_id.clone(),
            client_secret: args.client.client_secret.clone().unwrap_or_default(),
            refresh_token: refresh.clone(),
            scope: args.scope.clone(),
            ..TokenRequest::default()
        },
        (None, None) => TokenRequest {
            grant_type: GrantType::ClientCredentials.into(),
            client_id: args.client.client_id.clone(),
            client_secret: args.client.client_secret.clone().ok_or_else(|| {
                usage("client_credentials needs --client-secret (or TRIAS_CLIENT_SECRET)")
            })?,
            scope: args.scope.clone(),
            resource: args.resource.clone(),
            ..TokenRequest::default()
        },
    };
    let issued = issuer
        .token(request)
        .await
        .map_err(|s| CliError::from_status("issuer", &s))?
        .into_inner();
    let shown = if args.json {
        json!({
            "access_token": issued.access_token,
            "token_type": issued.token_type,
            "expires_in": issued.expires_in,
            "refresh_token": (!issued.refresh_token.is_empty()).then_some(&issued.refresh_token),
            "scope": issued.scope,
            "audience": issued.audience,
            "token_id": issued.token_id,
        })
        .to_string()
    } else {
        issued.access_token
    };
    writeln!(out, "{shown}").map_err(|e| usage(format!("cannot write: {e}")))
}

/// Revokes a token.
pub async fn revoke(args: RevokeArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let channel = args
        .services
        .channel("issuer", &args.services.issuer, "cli")
        .await?;
    IssuerClient::new(channel)
        .revoke(RevokeRequest {
            token: args.token,
            token_type_hint: String::new(),
            client_id: args.client.client_id,
            client_secret: args.client.client_secret.unwrap_or_default(),
        })
        .await
        .map_err(|s| CliError::from_status("issuer", &s))?;
    writeln!(out, "revoked").map_err(|e| usage(format!("cannot write: {e}")))
}

/// Asks the validator for a decision; a deny is [`CliError::Refused`] (exit code 1).
pub async fn check(args: CheckArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let channel = args
        .services
        .channel("validator", &args.services.validator, &args.backend)
        .await?;
    let decision = ValidatorClient::new(channel)
        .check(CheckRequest {
            token: args.token,
            action: args.action.clone(),
            resource: args.resource.clone(),
            audience: String::new(),
            context: [("via".to_owned(), "trias check".to_owned())].into(),
        })
        .await
        .map_err(|s| CliError::from_status("validator", &s))?
        .into_inner();
    let reason = Reason::try_from(decision.reason)
        .map(|r| r.as_str_name().trim_start_matches("REASON_").to_lowercase())
        .unwrap_or_else(|_| decision.reason.to_string());
    let verdict = if decision.allowed { "allow" } else { "deny" };
    let shown = if args.json {
        json!({
            "allowed": decision.allowed,
            "reason": reason,
            "detail": decision.detail,
            "subject": decision.subject,
            "client_id": decision.client_id,
            "scopes": decision.scopes,
            "token_id": decision.token_id,
            "expires_at": decision.expires_at.map(|t| t.seconds),
            "acr": decision.acr,
        })
        .to_string()
    } else if decision.allowed {
        format!(
            "allow  {} {} by {} (client {}, token {})",
            args.action, args.resource, decision.subject, decision.client_id, decision.token_id
        )
    } else {
        format!("deny  {reason}: {}", decision.detail)
    };
    writeln!(out, "{shown}").map_err(|e| usage(format!("cannot write: {e}")))?;
    if decision.allowed {
        Ok(())
    } else {
        Err(CliError::Refused(format!("{verdict}: {reason}")))
    }
}

/// A PKCE (RFC 7636) verifier and its S256 challenge.
pub(crate) fn pkce() -> Result<(String, String), CliError> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| usage("no randomness for PKCE"))?;
    let verifier = BASE64URL_NOPAD.encode(&bytes);
    let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
    Ok((verifier, BASE64URL_NOPAD.encode(digest.as_ref())))
}

/// The password: the first line of stdin, or typed on the terminal without echo.
fn read_password(from_stdin: bool, username: &str) -> Result<String, CliError> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| usage(format!("cannot read the password from stdin: {e}")))?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_owned());
    }
    if !std::io::stdin().is_terminal() {
        return Err(usage(
            "no terminal to ask for the password: use --password-stdin",
        ));
    }
    // No echo while the password is typed; `stty` restores it after.
    let echo = |on: bool| {
        std::process::Command::new("stty")
            .arg(if on { "echo" } else { "-echo" })
            .stdin(std::process::Stdio::inherit())
            .status()
    };
    let _ = echo(false);
    let typed = prompt(&format!("password for {username}: "));
    let _ = echo(true);
    eprintln!();
    typed
}

/// Asks on stderr and reads one line from the terminal.
fn prompt(question: &str) -> Result<String, CliError> {
    if !std::io::stdin().is_terminal() {
        return Err(usage(format!(
            "the issuer needs {}but there is no terminal to ask on",
            question.trim_end_matches(' ')
        )));
    }
    eprint!("{question}");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| usage(format!("cannot read from the terminal: {e}")))?;
    Ok(line.trim().to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    #[test]
    fn pkce_challenge_is_the_s256_of_the_verifier() {
        let (verifier, challenge) = super::pkce().unwrap();
        assert_eq!(verifier.len(), 43);
        let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
        assert_eq!(
            challenge,
            data_encoding::BASE64URL_NOPAD.encode(digest.as_ref())
        );
        assert_ne!(super::pkce().unwrap().0, verifier, "fresh each time");
    }
}
