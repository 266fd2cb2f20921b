//! Key custody and the transport contract: the validator and the auditor refuse to start
//! next to the issuer's signing keys, the issuer refuses a key store others may read, and no
//! service runs without mTLS unless development plain text is asked for by name.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::collections::BTreeMap;
use std::sync::Arc;

use trias_runtime::clock::SystemClock;
use trias_tests::{IssuerOptions, start_issuer, tls_env};

/// The issuer's SQLite key store in a harness issuer's data directory.
fn key_store(issuer: &trias_tests::IssuerHandle) -> std::path::PathBuf {
    issuer.dir.path().join("data").join("issuer.db")
}

fn validator_env(dir: &std::path::Path) -> BTreeMap<String, String> {
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, trias_policy::SAMPLE).unwrap();
    let mut env = BTreeMap::from([
        (
            "TRIAS_VALIDATOR_POLICY".to_owned(),
            policy.display().to_string(),
        ),
        (
            "TRIAS_VALIDATOR_ISSUER".to_owned(),
            "http://127.0.0.1:1".to_owned(),
        ),
        (
            "TRIAS_VALIDATOR_DATA_DIR".to_owned(),
            dir.join("data").display().to_string(),
        ),
    ]);
    env.extend(tls_env(trias_validator::config::ENV_PREFIX, "validator"));
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_validator_and_the_auditor_refuse_the_issuers_key_store() {
    let issuer = start_issuer(IssuerOptions::default()).await.unwrap();
    let keys = format!("sqlite://{}?mode=rwc", key_store(&issuer).display());
    let dir = tempfile::tempdir().unwrap();

    let mut env = validator_env(dir.path());
    env.insert("TRIAS_VALIDATOR_DATABASE_URL".to_owned(), keys.clone());
    let config = trias_validator::ValidatorConfig::load(None, &env).unwrap();
    let error = trias_validator::open(&config, Arc::new(SystemClock))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("database_url") && error.contains("signing-key database"),
        "{error}"
    );

    // The same key store as a TLS key file.
    let mut env = validator_env(dir.path());
    env.insert(
        "TRIAS_VALIDATOR_TLS__KEY".to_owned(),
        key_store(&issuer).display().to_string(),
    );
    let config = trias_validator::ValidatorConfig::load(None, &env).unwrap();
    let error = trias_validator::open(&config, Arc::new(SystemClock))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("tls.key"), "{error}");

    let mut env = BTreeMap::from([
        (
            "TRIAS_AUDITOR_DATA_DIR".to_owned(),
            dir.path().join("auditor").display().to_string(),
        ),
        ("TRIAS_AUDITOR_DATABASE_URL".to_owned(), keys),
    ]);
    env.extend(tls_env(trias_auditor::config::ENV_PREFIX, "auditor"));
    let config = trias_auditor::AuditorConfig::load(None, &env).unwrap();
    let error = trias_auditor::open(&config, Arc::new(SystemClock))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("signing-key database"), "{error}");
    issuer.stop().await;
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issuer_refuses_a_key_store_others_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let mut issuer = start_issuer(IssuerOptions::default()).await.unwrap();
    let store = key_store(&issuer);
    let data_dir = issuer.dir.path().join("data");
    assert_eq!(
        std::fs::metadata(&store).unwrap().permissions().mode() & 0o777,
        0o600,
        "the key store is created owner-only"
    );
    let policy = issuer.dir.path().join("policy.toml");
    let mut env = BTreeMap::from([
        (
            "TRIAS_ISSUER_POLICY".to_owned(),
            policy.display().to_string(),
        ),
        (
            "TRIAS_ISSUER_DATA_DIR".to_owned(),
            data_dir.display().to_string(),
        ),
    ]);
    env.extend(tls_env(trias_issuer::config::ENV_PREFIX, "issuer"));
    // Keep the directory past the handle, which would delete it.
    let _dir = std::mem::replace(&mut issuer.dir, tempfile::tempdir().unwrap());
    issuer.stop().await;
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = trias_issuer::IssuerConfig::load(None, &env).unwrap();
    let error = trias_issuer::open(&config, Arc::new(SystemClock))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("group or others"), "{error}");
}
