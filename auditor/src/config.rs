//! The auditor's configuration: a TOML file plus `TRIAS_AUDITOR_` environment variables,
//! strict (unknown keys are errors) and validated at start-up.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use trias_runtime::config::ConfigError;
use trias_runtime::limit::Quota;
use trias_runtime::secret::Secret;
use trias_runtime::tls::TlsFiles;

use crate::checkpoint::valid_key_name;
use crate::detect::{self, DetectConfig};

/// The prefix of the auditor's environment variables.
pub const ENV_PREFIX: &str = "TRIAS_AUDITOR_";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditorConfig {
    /// Address of the gRPC API.
    #[serde(default = "default_grpc_addr")]
    pub grpc_addr: SocketAddr,
    /// Where the checkpoint key (and the SQLite log, by default) live.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The log's database: `sqlite://…` or `postgres://…`; defaults to
    /// `sqlite://<data_dir>/auditor.db`.
    #[serde(default)]
    pub database_url: Option<Secret<String>>,
    /// The checkpoint origin line, which also names the checkpoint key.
    #[serde(default = "default_origin")]
    pub origin: String,
    /// The producers allowed to append.
    #[serde(default = "default_producers")]
    pub producers: Vec<String>,
    /// The validator that decides security teams' tokens (`audit:read`, action
    /// `audit.query` at audience `auditor`). Without it the query, proof, export and alert
    /// APIs refuse every call.
    #[serde(default)]
    pub validator_url: Option<String>,
    /// The detectors' settings.
    #[serde(default)]
    pub detectors: DetectConfig,
    /// Limits on what a flood can make the auditor do.
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

/// The auditor's limits (`[limits]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// `access_refused` alerts logged per caller identity (`"<count>/<window>"` or `"off"`):
    /// past it a refused caller is still refused, but no longer written to the log, so a
    /// flood of refused calls cannot fill the log or hold the sequencer.
    #[serde(default = "default_refusal_alerts")]
    pub refusal_alerts_per_caller: Quota,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            refusal_alerts_per_caller: default_refusal_alerts(),
        }
    }
}

fn default_refusal_alerts() -> Quota {
    Quota::new(10, std::time::Duration::from_secs(60))
}

fn default_grpc_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7421))
}
fn default_data_dir() -> PathBuf {
    PathBuf::from(".trias/auditor")
}
fn default_origin() -> String {
    "trias.local/audit".into()
}
fn default_producers() -> Vec<String> {
    vec!["issuer".into(), "validator".into()]
}

impl AuditorConfig {
    /// Loads the configuration from an optional file and the environment map.
    pub fn load(
        file: Option<&Path>,
        env: &BTreeMap<String, String>,
    ) -> Result<AuditorConfig, ConfigError> {
        let config: AuditorConfig = trias_runtime::config::load(file, env, ENV_PREFIX)?;
        config.validate().map_err(|(key, reason)| ConfigError {
            source: file.map_or_else(|| "environment".to_owned(), |f| f.display().to_string()),
            key: Some(key),
            reason,
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, reason: &str| Err((key.to_owned(), reason.to_owned()));
        if !valid_key_name(&self.origin) {
            return bad("origin", "must be non-empty, without spaces or `+`");
        }
        if self.producers.is_empty() {
            return bad("producers", "must name at least one producer");
        }
        for (i, producer) in self.producers.iter().enumerate() {
            if producer.trim().is_empty() {
                return Err((format!("producers.{i}"), "must not be empty".into()));
            }
            if self.producers[..i].contains(producer) {
                return Err((format!("producers.{i}"), "is listed twice".into()));
            }
            if producer == detect::PRODUCER {
                return Err((
                    format!("producers.{i}"),
                    "is the auditor's own name for its alerts".into(),
                ));
            }
        }
        if self.detectors.denial_burst_count < 2 {
            return bad("detectors.denial_burst_count", "must be at least 2");
        }
        if self.detectors.denial_burst_window.is_zero() {
            return bad("detectors.denial_burst_window", "must be positive");
        }
        if self.detectors.login_failure_count < 2 {
            return bad("detectors.login_failure_count", "must be at least 2");
        }
        if self.detectors.login_failure_window.is_zero() {
            return bad("detectors.login_failure_window", "must be positive");
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
        Ok(())
    }

    /// The log's database URL, defaulting to a SQLite file in the data directory.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.expose().clone(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("auditor.db").display()
            ),
        }
    }

    /// The checkpoint-signing key file.
    pub fn key_path(&self) -> PathBuf {
        self.data_dir.join("checkpoint-key.pk8")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> BTreeMap<String, String> {
        vars.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_fill_what_is_not_set() {
        let config = AuditorConfig::load(None, &env(&[])).unwrap();
        assert_eq!(config.grpc_addr, SocketAddr::from(([127, 0, 0, 1], 7421)));
        assert_eq!(config.origin, "trias.local/audit");
        assert_eq!(config.producers, ["issuer", "validator"]);
        assert!(config.database_url().starts_with("sqlite://"));
        assert!(config.key_path().ends_with("checkpoint-key.pk8"));
        assert!(!config.log_json);
        assert_eq!(config.detectors, DetectConfig::default());
        assert_eq!(
            config.detectors.never_issued_grace,
            std::time::Duration::from_secs(30)
        );
        assert_eq!(config.detectors.denial_burst_count, 20);
    }

    #[test]
    fn environment_sets_detector_settings() {
        let config = AuditorConfig::load(
            None,
            &env(&[
                ("TRIAS_AUDITOR_DETECTORS__NEVER_ISSUED_GRACE", "2s"),
                ("TRIAS_AUDITOR_DETECTORS__DENIAL_BURST_COUNT", "5"),
                ("TRIAS_AUDITOR_DETECTORS__DENIAL_BURST_WINDOW", "10s"),
                ("TRIAS_AUDITOR_DETECTORS__LOGIN_FAILURE_COUNT", "4"),
                ("TRIAS_AUDITOR_DETECTORS__LOGIN_FAILURE_WINDOW", "15m"),
            ]),
        )
        .unwrap();
        assert_eq!(
            config.detectors,
            DetectConfig {
                never_issued_grace: std::time::Duration::from_secs(2),
                denial_burst_count: 5,
                denial_burst_window: std::time::Duration::from_secs(10),
                login_failure_count: 4,
                login_failure_window: std::time::Duration::from_secs(900),
            }
        );
    }

    #[test]
    fn environment_sets_producers_and_origin() {
        let config = AuditorConfig::load(
            None,
            &env(&[
                ("TRIAS_AUDITOR_PRODUCERS", "[\"issuer\"]"),
                ("TRIAS_AUDITOR_ORIGIN", "audit.example.com/log"),
            ]),
        )
        .unwrap();
        assert_eq!(config.producers, ["issuer"]);
        assert_eq!(config.origin, "audit.example.com/log");
    }

    #[test]
    fn bad_values_are_named() {
        for (key, value, named) in [
            ("TRIAS_AUDITOR_ORIGIN", "\"has space\"", "origin"),
            ("TRIAS_AUDITOR_ORIGIN", "a+b", "origin"),
            ("TRIAS_AUDITOR_PRODUCERS", "[]", "producers"),
            ("TRIAS_AUDITOR_PRODUCERS", "[\"a\", \"a\"]", "producers.1"),
            ("TRIAS_AUDITOR_PRODUCERS", "[\"auditor\"]", "producers.0"),
            (
                "TRIAS_AUDITOR_DETECTORS__DENIAL_BURST_COUNT",
                "1",
                "detectors.denial_burst_count",
            ),
            (
                "TRIAS_AUDITOR_DETECTORS__LOGIN_FAILURE_COUNT",
                "0",
                "detectors.login_failure_count",
            ),
            ("TRIAS_AUDITOR_DATABASE_URL", "mysql://x", "database_url"),
            ("TRIAS_AUDITOR_SIGNING_KEY", "x", "signing_key"),
        ] {
            let error = AuditorConfig::load(None, &env(&[(key, value)])).unwrap_err();
            assert_eq!(error.key.as_deref(), Some(named), "{key}={value}: {error}");
        }
    }

    #[test]
    fn database_url_is_never_printed() {
        let config = AuditorConfig::load(
            None,
            &env(&[("TRIAS_AUDITOR_DATABASE_URL", "postgres://u:hunter2@db/x")]),
        )
        .unwrap();
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
