//! The Trias issuer: the only process that holds token-signing keys. It authenticates clients
//! and users, mints short-lived access tokens (RFC 9068 JWTs) and rotating refresh tokens,
//! enforces static separation of duties at minting, publishes its public keys and revocations,
//! and writes every outcome to its durable audit outbox.
//!
//! [`serve`] runs the gRPC API and the HTTP endpoints on listeners it is given, until the
//! shutdown future completes; the binary and the tests run the same code.

#![forbid(unsafe_code)]

pub mod config;
pub mod error;
pub mod grpc;
pub mod http;
pub mod issuer;
pub mod keys;
mod login;
pub mod metrics;
pub mod secrets;
pub mod store;
#[cfg(test)]
mod store_tests;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use trias_policy::Policy;
use trias_runtime::access::TokenChecker;
use trias_runtime::clock::Clock;
use trias_runtime::outbox::{Outbox, OutboxConfig};
use trias_runtime::shipper::ShipperHandle;
use trias_runtime::tls::Transport;

pub use config::IssuerConfig;
pub use error::Error;
pub use issuer::{Actor, Issuer, Settings};

/// Why the issuer could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("policy: {0}")]
    Policy(#[from] trias_policy::PolicyError),
    #[error("data directory {path}: {reason}")]
    DataDir { path: String, reason: String },
    #[error("database: {0}")]
    Store(#[from] store::StoreError),
    #[error("audit outbox: {0}")]
    Outbox(#[from] trias_runtime::outbox::OutboxError),
    #[error("issuer: {0}")]
    Issuer(#[from] Error),
    #[error("{0}")]
    Tls(#[from] trias_runtime::tls::TlsError),
    #[error("server: {0}")]
    Serve(String),
}

/// Opens everything the configuration names — policy, database (migrated), outbox, keys —
/// and builds the issuer.
pub async fn open(config: &IssuerConfig, clock: Arc<dyn Clock>) -> Result<Issuer, StartError> {
    let policy = Policy::load(&config.policy)?;
    let transport = Transport::from_config(config.tls.as_ref(), config.dev_plaintext, "issuer")?;
    create_private_dir(&config.data_dir)?;
    let url = config.database_url();
    if let Some(path) = trias_runtime::custody::sqlite_path(&url) {
        create_private_file(&path)?;
        // The database holds the private signing keys: refuse it if others may read it.
        trias_runtime::tls::check_owner_only(&path).map_err(|e| StartError::DataDir {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
    }
    let store = store::Store::open(&url).await?;
    let outbox = Outbox::open(
        OutboxConfig::new(config.outbox_path(), config.audit.producer.clone()),
        Arc::clone(&clock),
    )
    .await?;
    let settings = Settings {
        issuer: config.issuer_url(),
        access_ttl: config.access_token_ttl,
        refresh_ttl: config.refresh_token_ttl,
        code_ttl: config.code_ttl,
        key_publish_delay: config.key_publish_delay,
        key_algorithm: config.key_algorithm,
        strict_audit: config.audit.strict,
        role_grant_ttl: config.role_grant_ttl,
        admin_audience: config.admin_audience.clone(),
        auditor_url: config.audit.auditor_url.clone(),
        admin_check: match &config.validator_url {
            Some(url) => Some(TokenChecker::new(&transport, url, &config.admin_audience)?),
            None => {
                tracing::warn!("no validator_url: the admin api refuses every call");
                None
            }
        },
        transport,
        validators: config.validators.clone(),
        limits: config.limits.clone(),
    };
    Ok(Issuer::new(store, policy, outbox, clock, settings).await?)
}

/// Creates the data directory readable by its owner only: it holds the signing keys.
fn create_private_dir(path: &std::path::Path) -> Result<(), StartError> {
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

/// Opens the issuer the configuration describes, binds its listeners and serves until
/// `shutdown` completes: what the binary (and `trias serve issuer`) runs.
pub async fn run(
    config: &IssuerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let issuer = open(config, Arc::new(trias_runtime::clock::SystemClock)).await?;
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
    tracing::info!(grpc = %config.grpc_addr, http = %config.http_addr, metrics = ?config.metrics_addr, issuer = %issuer.settings().issuer, "issuer listening");
    serve(issuer, grpc, http, metrics, shutdown).await?;
    tracing::info!("issuer stopped");
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM: the shutdown signal of the binaries.
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

/// Creates the SQLite database file owner-only before SQLite does (it holds the private
/// signing keys); SQLite gives its -wal and -shm files the same mode.
fn create_private_file(path: &std::path::Path) -> Result<(), StartError> {
    let failed = |e: std::io::Error| StartError::DataDir {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).map_err(failed)?;
    Ok(())
}

/// Serves the gRPC API on `grpc`, the HTTP endpoints on `http` and, if given, Prometheus
/// metrics on `metrics` until `shutdown` completes, shipping the audit outbox to the auditor
/// meanwhile if one is configured; then drains in-flight requests, flushes the outbox (for a
/// bounded time) and closes it.
pub async fn serve(
    issuer: Issuer,
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

    // Keys rotated by another issuer sharing the database become visible within a minute.
    let reloader = {
        let issuer = issuer.clone();
        let stop = stopped(stop_rx.clone());
        tokio::spawn(async move {
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    () = &mut stop => return,
                    () = tokio::time::sleep(std::time::Duration::from_secs(30)) => {
                        if let Err(e) = issuer.reload_keys().await {
                            tracing::warn!(error = %e, "reloading signing keys failed");
                        }
                    }
                }
            }
        })
    };

    let (health, reflection) = trias_runtime::net::standard_services("trias.v1.Issuer")
        .await
        .map_err(StartError::Serve)?;
    let grpc_server = issuer
        .settings()
        .transport
        .server()?
        .add_service(grpc::IssuerService::new(issuer.clone(), stop_rx.clone()).into_server())
        .add_service(health)
        .add_service(reflection)
        .serve_with_incoming_shutdown(trias_runtime::net::nodelay(grpc), stopped(stop_rx.clone()));
    let http = axum::serve::ListenerExt::tap_io(http, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let http_server = axum::serve(
        http,
        http::router(issuer.clone()).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(stopped(stop_rx.clone()));
    let settings = issuer.settings();
    let shipper = ShipperHandle::start(
        issuer.outbox(),
        settings.auditor_url.as_deref(),
        &settings.transport,
    );
    let metrics_server = metrics.map(|listener| {
        let refresh_issuer = issuer.clone();
        let refresh: trias_runtime::metrics::Refresh = Arc::new(move || {
            let issuer = refresh_issuer.clone();
            Box::pin(async move {
                let now = issuer.clock().now();
                issuer.metrics().outbox.refresh(issuer.outbox(), now).await;
            })
        });
        tokio::spawn(trias_runtime::metrics::serve(
            listener,
            issuer.metrics().registry.clone(),
            Some(refresh),
            stopped(stop_rx.clone()),
        ))
    });
    let (grpc_result, http_result) = tokio::join!(grpc_server, http_server);
    if let Some(server) = metrics_server {
        server.abort();
    }
    reloader.abort();
    // No request is in flight any more: the shipper's final flush sees every event.
    shipper.stop().await;
    issuer.outbox().close().await;
    issuer.store().close().await;
    grpc_result.map_err(|e| StartError::Serve(format!("grpc: {e}")))?;
    http_result.map_err(|e| StartError::Serve(format!("http: {e}")))?;
    Ok(())
}
