//! The container deployment's files: each service's configuration in `deploy/` loads with
//! the service's own strict loader (unknown keys, bad values and missing keys fail), with the
//! database URL from the environment as docker-compose.yml sets it.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::collections::BTreeMap;
use std::path::PathBuf;

fn deploy(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file)
}

fn env(var: &str, database: &str) -> BTreeMap<String, String> {
    [(
        var.to_owned(),
        format!("postgres://trias:pw@postgres:5432/{database}"),
    )]
    .into()
}

#[test]
fn the_compose_configurations_load() {
    let issuer = trias_issuer::IssuerConfig::load(
        Some(&deploy("issuer.toml")),
        &env("TRIAS_ISSUER_DATABASE_URL", "trias_issuer"),
    )
    .unwrap();
    assert!(issuer.database_url().starts_with("postgres://"));
    assert_eq!(issuer.issuer_url(), "http://localhost:7402");
    assert!(issuer.tls.is_some() && !issuer.dev_plaintext);
    assert_eq!(issuer.metrics_addr.map(|a| a.port()), Some(7403));

    let validator = trias_validator::ValidatorConfig::load(
        Some(&deploy("validator.toml")),
        &env("TRIAS_VALIDATOR_DATABASE_URL", "trias_validator"),
    )
    .unwrap();
    // The validator accepts exactly the issuer's `iss`.
    assert_eq!(validator.issuer, issuer.issuer_url());
    assert!(validator.tls.is_some());
    assert_eq!(validator.metrics_addr.map(|a| a.port()), Some(7413));

    let auditor = trias_auditor::AuditorConfig::load(
        Some(&deploy("auditor.toml")),
        &env("TRIAS_AUDITOR_DATABASE_URL", "trias_auditor"),
    )
    .unwrap();
    assert!(auditor.tls.is_some());
    assert_eq!(auditor.metrics_addr.map(|a| a.port()), Some(7423));
}
