//! The issuer's configuration: a TOML file plus `TRIAS_ISSUER_` environment variables,
//! strict (unknown keys are errors) and validated at start-up.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use trias_runtime::config::duration;
use trias_runtime::limit::Quota;
use trias_runtime::secret::Secret;
use trias_runtime::tls::TlsFiles;

use crate::keys::KeyAlgorithm;

/// The prefix of the issuer's environment variables.
pub const ENV_PREFIX: &str = "TRIAS_ISSUER_";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Address of the gRPC API.
    #[serde(default = "default_grpc_addr")]
    pub grpc_addr: SocketAddr,
    /// Address of the HTTP endpoints (token, revoke, metadata, JWKS, the login page).
    #[serde(default = "default_http_addr")]
    pub http_addr: SocketAddr,
    /// The `iss` of every token; defaults to `http://<http_addr>`.
    #[serde(default)]
    pub issuer_url: Option<String>,
    /// Where the SQLite database and the outbox live by default.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// `sqlite://…` or `postgres://…`; defaults to `sqlite://<data_dir>/issuer.db`.
    #[serde(default)]
    pub database_url: Option<Secret<String>>,
    /// The duty policy file.
    pub policy: PathBuf,
    #[serde(default = "default_access_ttl", with = "duration")]
    pub access_token_ttl: Duration,
    #[serde(default = "default_refresh_ttl", with = "duration")]
    pub refresh_token_ttl: Duration,
    #[serde(default = "default_code_ttl", with = "duration")]
    pub code_ttl: Duration,
    #[serde(default = "default_publish_delay", with = "duration")]
    pub key_publish_delay: Duration,
    #[serde(default = "default_grant_ttl", with = "duration")]
    pub role_grant_ttl: Duration,
    #[serde(default)]
    pub key_algorithm: KeyAlgorithm,
    /// The validator that decides admin tokens (the issuer validates none itself); without
    /// it the admin API refuses every call.
    #[serde(default)]
    pub validator_url: Option<String>,
    /// The identities (mTLS URI SANs) allowed to follow the revocation feed.
    #[serde(default = "default_validators")]
    pub validators: Vec<String>,
    /// The audience of the tokens the admin API accepts.
    #[serde(default = "default_admin_audience")]
    pub admin_audience: String,
    #[serde(default)]
    pub audit: AuditConfig,
    /// Rate limits on the token endpoint and logins.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Mutual TLS for every gRPC connection, served and made (required unless
    /// `dev_plaintext`): the CA, this service's certificate and its owner-only key.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// gRPC in plain text, without peer identities: for development only (logs a warning).
    #[serde(default)]
    pub dev_plaintext: bool,
    /// Log as JSON lines.
    #[serde(default)]
    pub log_json: bool,
    /// Address of the Prometheus `GET /metrics` endpoint (plain HTTP); none when unset.
    #[serde(default)]
    pub metrics_addr: Option<SocketAddr>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The outbox file; defaults to `<data_dir>/issuer-outbox.db`.
    #[serde(default)]
    pub outbox: Option<PathBuf>,
    /// Refuse to mint when the outbox cannot persist the event.
    #[serde(default = "default_true")]
    pub strict: bool,
    /// This producer's name in the audit log.
    #[serde(default = "default_producer")]
    pub producer: String,
    /// The auditor's gRPC URL; when set, the outbox is shipped to it.
    #[serde(default)]
    pub auditor_url: Option<String>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            outbox: None,
            strict: true,
            producer: default_producer(),
            auditor_url: None,
        }
    }
}

/// The rate limits (`[limits]`); each is `"<count>/<window>"` or `"off"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Token requests per authenticated client (gRPC `Token`, `POST /oauth2/token`); off by
    /// default: the issuer's own capacity bounds a service client.
    #[serde(default = "default_token_per_client")]
    pub token_per_client: Quota,
    /// Failed logins (wrong password or one-time code) per username, known or not; once
    /// spent, logins for that username are refused, the right password included.
    #[serde(default = "default_failed_logins_per_user")]
    pub failed_logins_per_user: Quota,
    /// Failed logins at the login page and failed client authentications (token and
    /// revocation endpoints) per source address; once spent, that address is refused.
    #[serde(default = "default_failures_per_source")]
    pub failures_per_source: Quota,
    /// Keys (clients, usernames, addresses) each limit tracks at most.
    #[serde(default = "default_tracked_keys")]
    pub tracked_keys: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            token_per_client: default_token_per_client(),
            failed_logins_per_user: default_failed_logins_per_user(),
            failures_per_source: default_failures_per_source(),
            tracked_keys: default_tracked_keys(),
        }
    }
}

fn default_token_per_client() -> Quota {
    Quota::OFF
}
fn default_failed_logins_per_user() -> Quota {
    Quota::new(10, Duration::from_secs(300))
}
fn default_failures_per_source() -> Quota {
    Quota::new(100, Duration::from_secs(300))
}
fn default_tracked_keys() -> usize {
    100_000
}

fn default_validators() -> Vec<String> {
    vec![trias_runtime::tls::identity_of("validator")]
}
fn default_grpc_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7401))
}
fn default_http_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7402))
}
fn default_data_dir() -> PathBuf {
    PathBuf::from(".trias/issuer")
}
fn default_access_ttl() -> Duration {
    Duration::from_secs(300)
}
fn default_refresh_ttl() -> Duration {
    Duration::from_secs(8 * 3600)
}
fn default_code_ttl() -> Duration {
    Duration::from_secs(60)
}
fn default_publish_delay() -> Duration {
    Duration::from_secs(60)
}
fn default_grant_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_admin_audience() -> String {
    "issuer-admin".into()
}
fn default_true() -> bool {
    true
}
fn default_producer() -> String {
    "issuer".into()
}

impl IssuerConfig {
    /// Loads the configuration from an optional file and the environment map.
    pub fn load(
        file: Option<&Path>,
        env: &std::collections::BTreeMap<String, String>,
    ) -> Result<IssuerConfig, trias_runtime::config::ConfigError> {
        let config: IssuerConfig = trias_runtime::config::load(file, env, ENV_PREFIX)?;
        config
            .validate()
            .map_err(|(key, reason)| trias_runtime::config::ConfigError {
                source: file.map_or_else(|| "environment".to_owned(), |f| f.display().to_string()),
                key: Some(key.to_owned()),
                reason,
            })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.access_token_ttl > Duration::from_secs(3600) {
            return Err((
                "access_token_ttl",
                "must be at most 1h: access tokens are short-lived".into(),
            ));
        }
        if self.code_ttl > Duration::from_secs(600) {
            return Err(("code_ttl", "must be at most 10m (RFC 6749 §4.1.2)".into()));
        }
        if let Some(url) = &self.issuer_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(("issuer_url", "must be an http(s) url".into()));
        }
        if let Some(url) = &self.database_url {
            let url = url.expose();
            if !(url.starts_with("sqlite:")
                || url.starts_with("postgres://")
                || url.starts_with("postgresql://"))
            {
                return Err((
                    "database_url",
                    "must start with sqlite: or postgres://".into(),
                ));
            }
        }
        if !(16..=10_000_000).contains(&self.limits.tracked_keys) {
            return Err((
                "limits.tracked_keys",
                "must be between 16 and 10000000".into(),
            ));
        }
        if let Some(url) = &self.audit.auditor_url {
            trias_runtime::shipper::check_auditor_url(url).map_err(|e| ("audit.auditor_url", e))?;
        }
        Ok(())
    }

    /// The issuer URL (`iss`).
    pub fn issuer_url(&self) -> String {
        self.issuer_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.http_addr))
    }

    /// The database URL, defaulting to a SQLite file in the data directory.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.expose().clone(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("issuer.db").display()
            ),
        }
    }

    /// The outbox file.
    pub fn outbox_path(&self) -> PathBuf {
        self.audit
            .outbox
            .clone()
            .unwrap_or_else(|| self.data_dir.join("issuer-outbox.db"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn environment_sets_keys_and_defaults_fill_the_rest() {
        let env = BTreeMap::from([
            ("TRIAS_ISSUER_POLICY".to_owned(), "policy.toml".to_owned()),
            ("TRIAS_ISSUER_ACCESS_TOKEN_TTL".to_owned(), "2m".to_owned()),
            ("TRIAS_ISSUER_AUDIT__STRICT".to_owned(), "false".to_owned()),
        ]);
        let config = IssuerConfig::load(None, &env).unwrap();
        assert_eq!(config.access_token_ttl, Duration::from_secs(120));
        assert!(!config.audit.strict);
        assert_eq!(config.issuer_url(), "http://127.0.0.1:7402");
        assert!(config.database_url().starts_with("sqlite://"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let env = BTreeMap::from([
            ("TRIAS_ISSUER_POLICY".to_owned(), "p.toml".to_owned()),
            ("TRIAS_ISSUER_ACCES_TOKEN_TTL".to_owned(), "2m".to_owned()),
        ]);
        let error = IssuerConfig::load(None, &env).unwrap_err().to_string();
        assert!(error.contains("acces_token_ttl"), "{error}");
        let env = BTreeMap::from([
            ("TRIAS_ISSUER_POLICY".to_owned(), "p.toml".to_owned()),
            ("TRIAS_ISSUER_ACCESS_TOKEN_TTL".to_owned(), "2h".to_owned()),
        ]);
        let error = IssuerConfig::load(None, &env).unwrap_err().to_string();
        assert!(
            error.contains("access_token_ttl") && error.contains("at most 1h"),
            "{error}"
        );
    }

    #[test]
    fn limits_have_defaults_and_read_as_count_per_window() {
        let env = BTreeMap::from([
            ("TRIAS_ISSUER_POLICY".to_owned(), "p.toml".to_owned()),
            (
                "TRIAS_ISSUER_LIMITS__TOKEN_PER_CLIENT".to_owned(),
                "50/1s".to_owned(),
            ),
            (
                "TRIAS_ISSUER_LIMITS__FAILURES_PER_SOURCE".to_owned(),
                "off".to_owned(),
            ),
        ]);
        let config = IssuerConfig::load(None, &env).unwrap();
        assert_eq!(
            config.limits.token_per_client,
            Quota::new(50, Duration::from_secs(1))
        );
        assert!(config.limits.failures_per_source.is_off());
        assert_eq!(
            config.limits.failed_logins_per_user,
            Quota::new(10, Duration::from_secs(300))
        );
        let env = BTreeMap::from([
            ("TRIAS_ISSUER_POLICY".to_owned(), "p.toml".to_owned()),
            (
                "TRIAS_ISSUER_LIMITS__FAILED_LOGINS_PER_USER".to_owned(),
                "ten".to_owned(),
            ),
        ]);
        let error = IssuerConfig::load(None, &env).unwrap_err().to_string();
        assert!(error.contains("failed_logins_per_user"), "{error}");
    }

    #[test]
    fn database_url_is_never_printed() {
        let env = BTreeMap::from([
            ("TRIAS_ISSUER_POLICY".to_owned(), "p.toml".to_owned()),
            (
                "TRIAS_ISSUER_DATABASE_URL".to_owned(),
                "postgres://u:hunter2@db/x".to_owned(),
            ),
        ]);
        let config = IssuerConfig::load(None, &env).unwrap();
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
