//! The validator's configuration: a TOML file plus `TRIAS_VALIDATOR_` environment variables,
//! strict (unknown keys are errors) and validated at start-up.
//!
//! There is deliberately no setting that names or holds a private key: the validator gets the
//! issuer's public keys over gRPC and nothing else.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use trias_runtime::config::{ConfigError, duration};
use trias_runtime::secret::Secret;
use trias_runtime::tls::TlsFiles;

/// The prefix of the validator's environment variables.
pub const ENV_PREFIX: &str = "TRIAS_VALIDATOR_";

/// The largest clock skew the validator accepts (RFC 8725 leaves it to the deployment; Trias
/// caps it so a misconfiguration cannot keep expired tokens alive for long).
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidatorConfig {
    /// Address of the gRPC API (`Check`, `CheckBatch`).
    #[serde(default = "default_grpc_addr")]
    pub grpc_addr: SocketAddr,
    /// Address of the HTTP endpoint (RFC 7662 introspection).
    #[serde(default = "default_http_addr")]
    pub http_addr: SocketAddr,
    /// URL of the issuer's gRPC API, where the JWKS and the revocation feed come from.
    #[serde(default = "default_issuer_grpc")]
    pub issuer_grpc: String,
    /// The exact `iss` every accepted token carries.
    pub issuer: String,
    /// The duty policy file (the validator uses its audiences and dual-control rules).
    pub policy: PathBuf,
    /// Where the SQLite ledger and the outbox live by default.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The dual-control ledger: `sqlite://…` or `postgres://…`; defaults to
    /// `sqlite://<data_dir>/validator.db`.
    #[serde(default)]
    pub database_url: Option<Secret<String>>,
    /// Allowed difference between the issuer's clock and ours for `exp`, `nbf` and `iat`.
    #[serde(default = "default_clock_skew", with = "duration")]
    pub clock_skew: Duration,
    /// Tokens longer than this are refused before any parsing or cryptography.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// How often the JWKS is fetched even when nothing asks for it.
    #[serde(default = "default_jwks_refresh", with = "duration")]
    pub jwks_refresh: Duration,
    /// The least time between two fetches caused by tokens naming an unknown `kid`.
    #[serde(default = "default_unknown_kid_min_interval", with = "duration")]
    pub unknown_kid_min_interval: Duration,
    /// How long start-up waits for the first JWKS before giving up.
    #[serde(default = "default_start_timeout", with = "duration")]
    pub start_timeout: Duration,
    /// The most verified tokens remembered.
    #[serde(default = "default_cache_capacity")]
    pub cache_capacity: usize,
    #[serde(default)]
    pub audit: AuditConfig,
    /// The audience of each caller identity (mTLS URI SAN) whose name is not its audience;
    /// any other `spiffe://trias/<name>` is bound to audience `<name>`. By default the
    /// issuer checks admin tokens at `issuer-admin` (when the policy has that audience).
    #[serde(default)]
    pub caller_audiences: Option<BTreeMap<String, String>>,
    /// Backends allowed to call the introspection endpoint, each bound to one audience.
    #[serde(default)]
    pub introspection_clients: Vec<IntrospectionClient>,
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
    /// The outbox file; defaults to `<data_dir>/validator-outbox.db`.
    #[serde(default)]
    pub outbox: Option<PathBuf>,
    /// Refuse to answer a check when the outbox cannot persist its event.
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

/// A caller of the introspection endpoint: HTTP Basic credentials and the audience its
/// introspections are decided for.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionClient {
    pub client_id: String,
    /// Lowercase or uppercase hex of SHA-256 of the client's secret; the secret itself is
    /// never configured.
    pub secret_sha256: String,
    /// The audience (policy audience id) the caller is.
    pub audience: String,
}

impl IntrospectionClient {
    /// The decoded secret hash, if it is 32 bytes of hex.
    pub fn secret_hash(&self) -> Option<[u8; 32]> {
        let bytes = data_encoding::HEXLOWER_PERMISSIVE
            .decode(self.secret_sha256.as_bytes())
            .ok()?;
        bytes.try_into().ok()
    }
}

fn default_grpc_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7411))
}
fn default_http_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7412))
}
fn default_issuer_grpc() -> String {
    "http://127.0.0.1:7401".into()
}
fn default_data_dir() -> PathBuf {
    PathBuf::from(".trias/validator")
}
fn default_clock_skew() -> Duration {
    Duration::from_secs(5)
}
fn default_max_token_bytes() -> usize {
    8192
}
fn default_jwks_refresh() -> Duration {
    Duration::from_secs(300)
}
fn default_unknown_kid_min_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_start_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_cache_capacity() -> usize {
    100_000
}
fn default_true() -> bool {
    true
}
fn default_producer() -> String {
    "validator".into()
}

impl ValidatorConfig {
    /// Loads the configuration from an optional file and the environment map.
    pub fn load(
        file: Option<&Path>,
        env: &BTreeMap<String, String>,
    ) -> Result<ValidatorConfig, ConfigError> {
        let config: ValidatorConfig = trias_runtime::config::load(file, env, ENV_PREFIX)?;
        config.validate().map_err(|(key, reason)| ConfigError {
            source: file.map_or_else(|| "environment".to_owned(), |f| f.display().to_string()),
            key: Some(key),
            reason,
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, reason: &str| Err((key.to_owned(), reason.to_owned()));
        if self.clock_skew > MAX_CLOCK_SKEW {
            return bad("clock_skew", "must be at most 60s");
        }
        if self.issuer.is_empty() {
            return bad("issuer", "must be the issuer's exact `iss`");
        }
        if !(self.issuer_grpc.starts_with("http://") || self.issuer_grpc.starts_with("https://")) {
            return bad("issuer_grpc", "must be an http(s) url");
        }
        if self.max_token_bytes < 256 || self.max_token_bytes > 1024 * 1024 {
            return bad("max_token_bytes", "must be between 256 and 1048576");
        }
        if self.cache_capacity == 0 {
            return bad("cache_capacity", "must be at least 1");
        }
        if let Some(url) = &self.database_url {
            let url = url.expose();
            if !(url.starts_with("sqlite:")
                || url.starts_with("postgres://")
                || url.starts_with("postgresql://"))
            {
                return bad("database_url", "must start with sqlite: or postgres://");
            }
        }
        if let Some(url) = &self.audit.auditor_url {
            trias_runtime::shipper::check_auditor_url(url)
                .map_err(|e| ("audit.auditor_url".to_owned(), e))?;
        }
        for (i, client) in self.introspection_clients.iter().enumerate() {
            if client.client_id.is_empty() {
                return Err((
                    format!("introspection_clients.{i}.client_id"),
                    "must not be empty".into(),
                ));
            }
            if client.secret_hash().is_none() {
                return Err((
                    format!("introspection_clients.{i}.secret_sha256"),
                    "must be 64 hex digits (SHA-256 of the secret)".into(),
                ));
            }
            if self.introspection_clients[..i]
                .iter()
                .any(|c| c.client_id == client.client_id)
            {
                return Err((
                    format!("introspection_clients.{i}.client_id"),
                    "is listed twice".into(),
                ));
            }
        }
        Ok(())
    }

    /// The ledger's database URL, defaulting to a SQLite file in the data directory.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.expose().clone(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("validator.db").display()
            ),
        }
    }

    /// The outbox file.
    pub fn outbox_path(&self) -> PathBuf {
        self.audit
            .outbox
            .clone()
            .unwrap_or_else(|| self.data_dir.join("validator-outbox.db"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> BTreeMap<String, String> {
        let mut env = BTreeMap::from([
            (
                "TRIAS_VALIDATOR_POLICY".to_owned(),
                "policy.toml".to_owned(),
            ),
            (
                "TRIAS_VALIDATOR_ISSUER".to_owned(),
                "http://127.0.0.1:7402".to_owned(),
            ),
        ]);
        for (k, v) in vars {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
        env
    }

    #[test]
    fn defaults_fill_what_is_not_set() {
        let config = ValidatorConfig::load(None, &env(&[])).unwrap();
        assert_eq!(config.grpc_addr, SocketAddr::from(([127, 0, 0, 1], 7411)));
        assert_eq!(config.http_addr, SocketAddr::from(([127, 0, 0, 1], 7412)));
        assert_eq!(config.issuer_grpc, "http://127.0.0.1:7401");
        assert_eq!(config.clock_skew, Duration::from_secs(5));
        assert_eq!(config.max_token_bytes, 8192);
        assert_eq!(config.jwks_refresh, Duration::from_secs(300));
        assert_eq!(config.unknown_kid_min_interval, Duration::from_secs(10));
        assert_eq!(config.cache_capacity, 100_000);
        assert!(config.audit.strict);
        assert_eq!(config.audit.producer, "validator");
        assert!(config.database_url().starts_with("sqlite://"));
        assert!(config.outbox_path().ends_with("validator-outbox.db"));
    }

    #[test]
    fn skew_above_a_minute_is_refused() {
        let error = ValidatorConfig::load(None, &env(&[("TRIAS_VALIDATOR_CLOCK_SKEW", "61s")]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("clock_skew"), "{error}");
        let config =
            ValidatorConfig::load(None, &env(&[("TRIAS_VALIDATOR_CLOCK_SKEW", "1m")])).unwrap();
        assert_eq!(config.clock_skew, MAX_CLOCK_SKEW);
    }

    #[test]
    fn there_is_no_way_to_configure_a_private_key() {
        for key in [
            "TRIAS_VALIDATOR_PRIVATE_KEY",
            "TRIAS_VALIDATOR_SIGNING_KEY",
            "TRIAS_VALIDATOR_KEY_FILE",
            "TRIAS_VALIDATOR_KEYS",
        ] {
            let error = ValidatorConfig::load(None, &env(&[(key, "x")]))
                .unwrap_err()
                .to_string();
            assert!(error.contains("unknown field"), "{key}: {error}");
        }
    }

    #[test]
    fn introspection_clients_need_a_sha256() {
        let good = "[{client_id = \"payments\", secret_sha256 = \"2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824\", audience = \"payments\"}]";
        let config = ValidatorConfig::load(
            None,
            &env(&[("TRIAS_VALIDATOR_INTROSPECTION_CLIENTS", good)]),
        )
        .unwrap();
        assert!(config.introspection_clients[0].secret_hash().is_some());
        let bad =
            "[{client_id = \"payments\", secret_sha256 = \"hello\", audience = \"payments\"}]";
        let error = ValidatorConfig::load(
            None,
            &env(&[("TRIAS_VALIDATOR_INTROSPECTION_CLIENTS", bad)]),
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("secret_sha256"), "{error}");
    }

    #[test]
    fn database_url_is_never_printed() {
        let config = ValidatorConfig::load(
            None,
            &env(&[("TRIAS_VALIDATOR_DATABASE_URL", "postgres://u:hunter2@db/x")]),
        )
        .unwrap();
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
