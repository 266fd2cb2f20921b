//! The Trias auditor: the append-only, tamper-evident record of every issuance and every
//! check. Producers (the issuer and the validator) append batches of events; a single
//! sequencer gives each a log index, grows an RFC 9162 Merkle tree over them, and signs a
//! C2SP checkpoint with the auditor's own Ed25519 key before it acknowledges. Detectors
//! ([`detect`]) look at every new entry and log their alerts in the same commit; alerts are
//! streamed live by `WatchAlerts`. Anyone holding
//! a checkpoint and the verifier key can check inclusion and consistency proofs, or re-derive
//! the root from an export, without trusting the auditor.
//!
//! The auditor never mints or approves anything, and nothing in it edits or deletes an
//! entry: the database itself refuses UPDATE and DELETE on the log.
//!
//! [`serve`] runs the gRPC API on a listener it is given until the shutdown future
//! completes; the binary and the tests run the same code.

#![forbid(unsafe_code)]

pub mod auditor;
pub mod checkpoint;
pub mod config;
pub mod detect;
pub mod error;
pub mod grpc;
pub mod merkle;
#[cfg(test)]
mod merkle_props;
pub mod metrics;
pub mod sequencer;
pub mod store;
#[cfg(test)]
mod store_tests;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use trias_runtime::access::TokenChecker;
use trias_runtime::clock::Clock;

pub use auditor::Auditor;
pub use config::AuditorConfig;
pub use error::Error;

/// Why the auditor could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("data directory {path}: {reason}")]
    DataDir { path: String, reason: String },
    #[error("{0}")]
    Key(#[from] checkpoint::KeyError),
    #[error("database: {0}")]
    Store(#[from] store::StoreError),
    #[error("audit log: {0}")]
    Restore(#[from] sequencer::RestoreError),
    #[error("{0}")]
    Tls(#[from] trias_runtime::tls::TlsError),
    #[error("key custody: {0}")]
    Custody(String),
    #[error("server: {0}")]
    Serve(String),
}

/// Opens everything the configuration names: the checkpoint key (generated on first start),
/// the database (migrated), and the sequencer, after checking the stored tree against the
/// last signed checkpoint.
pub async fn open(config: &AuditorConfig, clock: Arc<dyn Clock>) -> Result<Auditor, StartError> {
    // Key custody: nothing this auditor is configured with may be the issuer's key store.
    let mut files = vec![("checkpoint key", config.key_path())];
    if let Some(path) = trias_runtime::custody::sqlite_path(&config.database_url()) {
        files.push(("database_url", path));
    }
    if let Some(tls) = &config.tls {
        files.extend(tls.named());
    }
    trias_runtime::custody::refuse_signing_keys(files).map_err(StartError::Custody)?;
    let transport = trias_runtime::tls::Transport::from_config(
        config.tls.as_ref(),
        config.dev_plaintext,
        "auditor",
    )?;
    create_private_dir(&config.data_dir)?;
    let key = Arc::new(checkpoint::SigningKey::load_or_create(
        &config.key_path(),
        &config.origin,
    )?);
    let url = config.database_url();
    if let Some(path) = url.strip_prefix("sqlite://") {
        create_private_file(Path::new(path.split('?').next().unwrap_or(path)))?;
    }
    let store = store::Store::open(&url).await?;
    let verifier = key.verifier();
    let sequencer = sequencer::Sequencer::start_with(
        store.clone(),
        key,
        Arc::clone(&clock),
        config.detectors.clone(),
    )
    .await?;
    tracing::info!(verifier = %verifier, "checkpoints are signed by this key");
    let access = match &config.validator_url {
        Some(url) => Some(TokenChecker::new(&transport, url, "auditor")?),
        None => {
            tracing::warn!(
                "no validator_url: the query, proof, export and alert APIs refuse every call"
            );
            None
        }
    };
    let auditor = Auditor::new(store, sequencer, verifier, config.producers.iter().cloned())
        .with_transport(transport)
        .with_refusal_alerts(config.limits.refusal_alerts_per_caller, clock);
    Ok(match access {
        Some(checker) => auditor.with_access(checker),
        None => auditor,
    })
}

/// Creates the data directory readable by its owner only: it holds the checkpoint key.
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

/// Creates the SQLite file owner-only before SQLite does; SQLite gives its -wal and -shm
/// files the same mode.
fn create_private_file(path: &Path) -> Result<(), StartError> {
    let failed = |e: std::io::Error| StartError::DataDir {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map_err(failed)?;
    Ok(())
}

/// Opens the auditor the configuration describes, binds its listener and serves until
/// `shutdown` completes: what the binary runs.
pub async fn run(
    config: &AuditorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let auditor = open(config, Arc::new(trias_runtime::clock::SystemClock)).await?;
    let bind = |addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|e| StartError::Serve(format!("cannot listen on {addr}: {e}")))
    };
    let grpc = bind(config.grpc_addr).await?;
    let metrics = match config.metrics_addr {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let bound = grpc.local_addr().unwrap_or(config.grpc_addr);
    tracing::info!(grpc = %bound, metrics = ?config.metrics_addr, origin = %config.origin, "auditor listening");
    serve(auditor, grpc, metrics, shutdown).await?;
    tracing::info!("auditor stopped");
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

/// Serves the gRPC API on `grpc` and, if given, Prometheus metrics on `metrics` until
/// `shutdown` completes, then drains in-flight requests, commits what the sequencer has
/// queued and closes the database.
pub async fn serve(
    auditor: Auditor,
    grpc: TcpListener,
    metrics: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let mut stopped = stop_rx.clone();
    let metrics_server = metrics.map(|listener| {
        let refresh_auditor = auditor.clone();
        let refresh: trias_runtime::metrics::Refresh = Arc::new(move || {
            let auditor = refresh_auditor.clone();
            Box::pin(async move {
                let size = auditor.checkpoint().tree_size;
                auditor.metrics().log_size.set(size as f64);
            })
        });
        let mut stop = stop_rx.clone();
        tokio::spawn(trias_runtime::metrics::serve(
            listener,
            auditor.metrics().registry.clone(),
            Some(refresh),
            async move {
                let _ = stop.wait_for(|stop| *stop).await;
            },
        ))
    });
    let (health, reflection) = trias_runtime::net::standard_services("trias.v1.Auditor")
        .await
        .map_err(StartError::Serve)?;
    let result = auditor
        .transport()
        .server()?
        // Alert streams end on the stop signal, so they never hold up a graceful shutdown.
        .add_service(grpc::AuditorService::with_stop(auditor.clone(), stop_rx).into_server())
        .add_service(health)
        .add_service(reflection)
        .serve_with_incoming_shutdown(trias_runtime::net::nodelay(grpc), async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        })
        .await;
    if let Some(server) = metrics_server {
        server.abort();
    }
    auditor.close().await;
    result.map_err(|e| StartError::Serve(format!("grpc: {e}")))
}
