//! The Trias validator: answers whether an access token allows an action on an object, for a
//! calling service. It holds public keys only — synced from the issuer's JWKS over gRPC — and a
//! dual-control ledger, and writes every decision to its durable audit outbox.
//!
//! The validator can verify but never sign: it has no configuration for a private key and no
//! signing-key type is reachable from this crate (neither jsonwebtoken's encoding key nor ring's
//! key pairs), nor does it depend on the issuer crate. A unit test
//! (`tests::no_signing_key_type_is_reachable`) scans this crate's sources and manifest and fails
//! if one appears.
//!
//! [`serve`] runs the gRPC API and the HTTP introspection endpoint on listeners it is given,
//! until the shutdown future completes; the binary and the tests run the same code.

#![forbid(unsafe_code)]

pub mod cache;
pub mod check;
pub mod config;
pub mod error;
pub mod grpc;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod revocation;
pub mod store;
#[cfg(test)]
mod store_tests;
pub mod validator;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use trias_policy::Policy;
use trias_runtime::clock::Clock;
use trias_runtime::outbox::{Outbox, OutboxConfig};
use trias_runtime::shipper::ShipperHandle;
use trias_runtime::tls::{Transport, identity_of};

pub use config::ValidatorConfig;
pub use error::Error;
pub use validator::{CheckInput, Settings, Validator, Verdict};

/// Why the validator could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("policy: {0}")]
    Policy(#[from] trias_policy::PolicyError),
    #[error("configuration: {0}")]
    Config(String),
    #[error("data directory {path}: {reason}")]
    DataDir { path: String, reason: String },
    #[error("database: {0}")]
    Store(#[from] store::StoreError),
    #[error("audit outbox: {0}")]
    Outbox(#[from] trias_runtime::outbox::OutboxError),
    #[error("issuer keys: {0}")]
    Keys(String),
    #[error("{0}")]
    Tls(#[from] trias_runtime::tls::TlsError),
    #[error("server: {0}")]
    Serve(String),
}

/// Opens everything the configuration names — policy, ledger (migrated), outbox — and waits
/// for the issuer's first JWKS (for at most `start_timeout`).
pub async fn open(
    config: &ValidatorConfig,
    clock: Arc<dyn Clock>,
) -> Result<Validator, StartError> {
    let policy = Policy::load(&config.policy)?;
    // Key custody: nothing this validator is configured with may be the issuer's key store.
    let mut files = vec![
        ("policy", config.policy.clone()),
        ("audit.outbox", config.outbox_path()),
    ];
    if let Some(path) = trias_runtime::custody::sqlite_path(&config.database_url()) {
        files.push(("database_url", path));
    }
    if let Some(tls) = &config.tls {
        files.extend(tls.named());
    }
    trias_runtime::custody::refuse_signing_keys(files).map_err(StartError::Config)?;
    let transport = Transport::from_config(config.tls.as_ref(), config.dev_plaintext, "validator")?;
    let caller_audiences = match &config.caller_audiences {
        Some(configured) => {
            for (id, audience) in configured {
                if policy.audience(audience).is_none() {
                    return Err(StartError::Config(format!(
                        "caller_audiences.{id:?}: the policy has no audience {audience:?}"
                    )));
                }
            }
            configured.clone()
        }
        // The issuer asks about admin tokens, if the policy has an admin audience.
        None => std::iter::once((identity_of("issuer"), "issuer-admin".to_owned()))
            .filter(|(_, audience)| policy.audience(audience).is_some())
            .collect(),
    };
    for (i, client) in config.introspection_clients.iter().enumerate() {
        if policy.audience(&client.audience).is_none() {
            return Err(StartError::Config(format!(
                "introspection_clients.{i}.audience: the policy has no audience {:?}",
                client.audience
            )));
        }
    }
    create_private_dir(&config.data_dir)?;
    let store = store::Store::open(&config.database_url()).await?;
    let outbox = Outbox::open(
        OutboxConfig::new(config.outbox_path(), config.audit.producer.clone()),
        Arc::clone(&clock),
    )
    .await?;
    let channel = transport
        .endpoint(&config.issuer_grpc, &identity_of("issuer"))
        .map_err(|e| StartError::Config(format!("issuer_grpc: {e}")))?
        .connect_timeout(Duration::from_secs(3))
        .connect_lazy();
    let keys = Arc::new(keys::Keys::new(
        Box::new(keys::GrpcJwks::new(channel.clone())),
        config.unknown_kid_min_interval,
    ));
    let count = keys
        .initial_sync(config.start_timeout)
        .await
        .map_err(StartError::Keys)?;
    tracing::info!(keys = count, "issuer keys loaded");
    let settings = Settings {
        issuer: config.issuer.as_str().into(),
        clock_skew: config.clock_skew,
        max_token_bytes: config.max_token_bytes,
        strict_audit: config.audit.strict,
        jwks_refresh: config.jwks_refresh,
        auditor_url: config.audit.auditor_url.clone(),
        transport,
        caller_audiences,
    };
    Ok(Validator::new(validator::Parts {
        policy,
        settings,
        keys,
        revocations: Arc::new(revocation::Revocations::default()),
        cache_capacity: config.cache_capacity,
        store,
        outbox,
        clock,
        introspection_clients: config.introspection_clients.clone(),
        issuer_channel: Some(channel),
    }))
}

/// Creates the data directory readable by its owner only.
fn create_private_dir(path: &Path) -> Result<(), StartError> {
    let failed = |e: std::io::Error| StartError::DataDir {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(path).map_err(failed)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(failed)?;
    }
    Ok(())
}

/// Opens the validator the configuration describes, binds its listeners and serves until
/// `shutdown` completes: what the binary runs.
pub async fn run(
    config: &ValidatorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let validator = open(config, Arc::new(trias_runtime::clock::SystemClock)).await?;
    let bind = |addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|e| StartError::Serve(format!("cannot listen on {addr}: {e}")))
    };
    let grpc = bind(config.grpc_addr).await?;
    let http = bind(config.http_addr).await?;
    let metrics = match config.metrics_addr {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    tracing::info!(grpc = %config.grpc_addr, http = %config.http_addr, metrics = ?config.metrics_addr, issuer = %config.issuer, "validator listening");
    serve(validator, grpc, http, metrics, shutdown).await?;
    tracing::info!("validator stopped");
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM: the shutdown signal of the binary.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = term => {} }
}

/// Serves the gRPC API on `grpc`, introspection on `http` and, if given, Prometheus metrics
/// on `metrics` until `shutdown` completes, following the issuer's JWKS and revocation feed and shipping the audit outbox to the
/// auditor (if one is configured) meanwhile; then drains in-flight requests, flushes the
/// outbox (for a bounded time) and closes it and the ledger.
pub async fn serve(
    validator: Validator,
    grpc: TcpListener,
    http: TcpListener,
    metrics: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let key_refresher = {
        let keys = Arc::clone(validator.keys());
        let every = validator.settings().jwks_refresh;
        let stop = stopped(stop_rx.clone());
        tokio::spawn(async move {
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    () = &mut stop => return,
                    () = tokio::time::sleep(every) => {
                        if let Err(error) = keys.refresh().await {
                            tracing::warn!(%error, "refreshing the issuer's JWKS failed; keeping the last good set");
                        }
                    }
                }
            }
        })
    };
    let feed = validator.issuer_channel().map(|channel| {
        tokio::spawn(revocation::follow(
            channel,
            Arc::clone(validator.revocations()),
            Arc::clone(validator.clock()),
            stopped(stop_rx.clone()),
        ))
    });

    let (health, reflection) = trias_runtime::net::standard_services("trias.v1.Validator")
        .await
        .map_err(StartError::Serve)?;
    let grpc_server = validator
        .settings()
        .transport
        .server()?
        .add_service(grpc::ValidatorService::new(validator.clone()).into_server())
        .add_service(health)
        .add_service(reflection)
        .serve_with_incoming_shutdown(trias_runtime::net::nodelay(grpc), stopped(stop_rx.clone()));
    let http = axum::serve::ListenerExt::tap_io(http, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let http_server = axum::serve(http, http::router(validator.clone()))
        .with_graceful_shutdown(stopped(stop_rx.clone()));
    let shipper = ShipperHandle::start(
        validator.outbox(),
        validator.settings().auditor_url.as_deref(),
        &validator.settings().transport,
    );
    let metrics_server = metrics.map(|listener| {
        let refresh_validator = validator.clone();
        let refresh: trias_runtime::metrics::Refresh = Arc::new(move || {
            let validator = refresh_validator.clone();
            Box::pin(async move {
                let now = validator.clock().now();
                let gauges = &validator.metrics().outbox;
                gauges.refresh(validator.outbox(), now).await;
            })
        });
        tokio::spawn(trias_runtime::metrics::serve(
            listener,
            validator.metrics().registry.clone(),
            Some(refresh),
            stopped(stop_rx.clone()),
        ))
    });
    let (grpc_result, http_result) = tokio::join!(grpc_server, http_server);
    if let Some(server) = metrics_server {
        server.abort();
    }
    key_refresher.abort();
    if let Some(feed) = feed {
        feed.abort();
    }
    // No check is in flight any more: the shipper's final flush sees every decision.
    shipper.stop().await;
    validator.outbox().close().await;
    validator.store().close().await;
    grpc_result.map_err(|e| StartError::Serve(format!("grpc: {e}")))?;
    http_result.map_err(|e| StartError::Serve(format!("http: {e}")))?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    /// The validator verifies and never signs: no signing-key type may be named anywhere in
    /// its sources, and it may not depend on the issuer (which holds them).
    #[test]
    fn no_signing_key_type_is_reachable() {
        // Spelled in pieces so this test does not find itself.
        let forbidden = [
            concat!("Encoding", "Key"),
            concat!("Ed25519", "KeyPair"),
            concat!("Ecdsa", "KeyPair"),
            concat!("RsaKey", "Pair"),
            concat!("private", "_pkcs8"),
            concat!("trias", "-issuer"),
            concat!("trias", "_issuer"),
        ];
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = vec![root.join("Cargo.toml")];
        let mut dirs = vec![root.join("src")];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    files.push(path);
                }
            }
        }
        assert!(files.len() > 5, "the scan found the sources");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for word in forbidden {
                assert!(
                    !text.contains(word),
                    "{} names {word}: the validator must never hold or reach a signing key",
                    file.display()
                );
            }
        }
    }
}
