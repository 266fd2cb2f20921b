//! The shipper: forwards a producer's outbox to the auditor's `Append`, in order, in batches,
//! retrying until each batch is acknowledged and only then marking it shipped.
//!
//! Delivery is at least once and the auditor dedups by event id, so a batch whose
//! acknowledgement was lost is simply sent again. Because the outbox is durable and only
//! acknowledged events are marked shipped, a restart of either side loses nothing: the
//! shipper resumes from the unshipped rows. It sends in sequence order and never starts a
//! batch before the previous one is acknowledged, so the auditor sees each producer's
//! numbers without holes unless an event really is missing.

use std::future::Future;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Endpoint;
use trias_proto::v1::auditor_client::AuditorClient;
use trias_proto::v1::{AppendRequest, AuditEvent};

use crate::outbox::{Outbox, OutboxError};
use crate::tls::{Transport, identity_of};

/// The most events the shipper sends in one `Append` (the auditor accepts up to 1000).
pub const MAX_BATCH: usize = 500;
/// The most bytes of encoded events the shipper sends in one `Append` (the auditor accepts
/// 16 MiB); a batch is cut short before it, though never below one event.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// The first wait after a failed attempt; each further failure doubles it up to [`BACKOFF_CAP`].
pub const BACKOFF_START: Duration = Duration::from_millis(50);
pub const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// How often the outbox is looked at even without a commit notification.
const POLL: Duration = Duration::from_secs(1);
/// How long the final flush on shutdown may take.
const FINAL_FLUSH: Duration = Duration::from_secs(3);
/// Shipped rows kept in the outbox behind the last shipped one, for inspection.
const PRUNE_MARGIN: u64 = 10_000;
/// Shipped events between two prunes.
const PRUNE_EVERY: u64 = 10_000;

/// Where to ship and how much at once.
#[derive(Debug, Clone)]
pub struct ShipperConfig {
    /// The auditor's gRPC endpoint, e.g. `http://127.0.0.1:7421`.
    pub auditor_url: String,
    /// Events per `Append`, at most [`MAX_BATCH`].
    pub batch: usize,
    /// How the auditor is reached: under mTLS it must prove the auditor's identity.
    pub transport: Transport,
}

impl ShipperConfig {
    /// Ships to `auditor_url` in batches of [`MAX_BATCH`].
    pub fn new(auditor_url: impl Into<String>) -> ShipperConfig {
        ShipperConfig {
            auditor_url: auditor_url.into(),
            batch: MAX_BATCH,
            transport: Transport::plaintext(),
        }
    }
}

/// Checks an auditor URL the way the shipper will use it; configurations call this at
/// start-up so a bad URL fails there, naming the key.
pub fn check_auditor_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err("must start with http:// or https://".into());
    }
    Endpoint::from_shared(url.to_owned())
        .map(drop)
        .map_err(|e| format!("is not a valid URL: {e}"))
}

/// Starts shipping `outbox` to the auditor until `shutdown` completes; then it makes one
/// last attempt (bounded by a few seconds) to ship what is left, and the task ends. What it
/// could not ship stays in the outbox for the next start.
pub fn spawn_shipper(
    outbox: Outbox,
    config: ShipperConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let endpoint = match config
            .transport
            .endpoint(&config.auditor_url, &identity_of("auditor"))
        {
            Ok(endpoint) => endpoint,
            Err(error) => {
                tracing::error!(%error, url = %config.auditor_url, "not shipping audit events: bad auditor url");
                return;
            }
        };
        let channel = endpoint
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(30))
            .connect_lazy();
        let shipper = Shipper {
            outbox,
            client: AuditorClient::new(crate::trace::traced(channel))
                .max_encoding_message_size(usize::MAX),
            batch: config.batch.clamp(1, MAX_BATCH),
            shipped: 0,
            since_prune: 0,
        };
        tracing::info!(auditor = %config.auditor_url, "shipping audit events");
        shipper.run(shutdown).await;
    })
}

/// The shipper a service's `serve` runs beside its servers: started with the service,
/// stopped (after its final flush) once the servers have drained.
#[derive(Debug, Default)]
pub struct ShipperHandle {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl ShipperHandle {
    /// Ships `outbox` to `auditor_url`; with `None`, ships nothing (events stay in the outbox).
    pub fn start(
        outbox: &Outbox,
        auditor_url: Option<&str>,
        transport: &Transport,
    ) -> ShipperHandle {
        let Some(url) = auditor_url else {
            return ShipperHandle::default();
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let config = ShipperConfig {
            transport: transport.clone(),
            ..ShipperConfig::new(url)
        };
        let task = spawn_shipper(outbox.clone(), config, async {
            let _ = stopped.await;
        });
        ShipperHandle {
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the shipper and waits for its final flush, which is bounded in time.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take()
            && let Err(error) = task.await
        {
            tracing::error!(%error, "the audit shipper failed");
        }
    }
}

struct Shipper {
    outbox: Outbox,
    client: AuditorClient<crate::trace::Traced>,
    batch: usize,
    /// The last sequence number acknowledged in this run.
    shipped: u64,
    since_prune: u64,
}

/// Why a shipping round ended.
enum Ended {
    /// Nothing is left to ship.
    Drained,
    /// The stop signal came while waiting to retry.
    Stopped,
    /// The outbox can no longer be written (it was closed).
    OutboxClosed,
}

impl Shipper {
    async fn run(mut self, shutdown: impl Future<Output = ()> + Send) {
        let mut committed = self.outbox.subscribe();
        let mut notified = true;
        tokio::pin!(shutdown);
        loop {
            match self.ship_all(&mut shutdown).await {
                Ended::Drained => {}
                Ended::Stopped => break,
                Ended::OutboxClosed => return,
            }
            tokio::select! {
                () = &mut shutdown => break,
                changed = committed.changed(), if notified => {
                    // The writer stopped: only the timer wakes us from now on.
                    notified = changed.is_ok();
                }
                () = tokio::time::sleep(POLL) => {}
            }
        }
        // A bounded last attempt: retries stop when the time is up.
        let mut never = std::future::pending::<()>();
        let flush = self.ship_all(&mut never);
        match tokio::time::timeout(FINAL_FLUSH, flush).await {
            Ok(Ended::Drained) => tracing::debug!("audit outbox flushed"),
            Ok(_) | Err(_) => {
                let depth = self.outbox.depth().await.unwrap_or_default();
                tracing::warn!(
                    unshipped = depth,
                    "stopping with audit events unshipped; they are sent after the next start"
                );
            }
        }
    }

    /// Ships batch after batch until the outbox has nothing unshipped, retrying each batch
    /// with backoff until acknowledged. Only `stop` interrupts the retries.
    async fn ship_all<S: Future<Output = ()> + Unpin>(&mut self, stop: &mut S) -> Ended {
        let mut backoff = BACKOFF_START;
        let mut failures = 0u32;
        loop {
            let attempt = match self.outbox.unshipped(self.shipped, self.batch).await {
                Ok(events) if events.is_empty() => return Ended::Drained,
                Ok(mut events) => {
                    events.truncate(fitting(&events, MAX_BATCH_BYTES));
                    self.send(events).await
                }
                Err(error) => Err(format!("reading the outbox: {error}")),
            };
            match attempt {
                Ok(last) => {
                    match self.outbox.mark_shipped(last).await {
                        Ok(()) => {}
                        Err(OutboxError::Closed) => return Ended::OutboxClosed,
                        // The auditor holds the events; only the watermark was not written
                        // (a full disk, say). Shipping goes on: the next mark covers these
                        // too, and a restart before it re-sends them, which the auditor
                        // ignores as already held.
                        Err(error) => {
                            tracing::warn!(%error, "cannot mark audit events shipped yet");
                        }
                    }
                    let sent = last.saturating_sub(self.shipped);
                    self.shipped = last;
                    self.prune(sent).await;
                    if failures > 0 {
                        tracing::info!(failures, "audit events are reaching the auditor again");
                    }
                    backoff = BACKOFF_START;
                    failures = 0;
                }
                Err(reason) => {
                    failures += 1;
                    // The first failure and then about one line per minute at the cap.
                    if failures == 1 || failures.is_multiple_of(12) {
                        tracing::warn!(%reason, failures, retry_in = ?backoff, "shipping audit events failed");
                    }
                    tokio::select! {
                        () = &mut *stop => return Ended::Stopped,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_CAP);
                }
            }
        }
    }

    /// Sends one batch; on acknowledgement returns its last sequence number.
    #[tracing::instrument(name = "audit.ship", skip_all, fields(events = events.len()))]
    async fn send(&mut self, events: Vec<AuditEvent>) -> Result<u64, String> {
        let Some(first) = events.first() else {
            return Err("empty batch".into());
        };
        let producer = first.producer.clone();
        let last = events.last().map_or(0, |e| e.producer_seq);
        let count = events.len();
        let response = self
            .client
            .append(AppendRequest { producer, events })
            .await
            .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?
            .into_inner();
        if response.receipts.len() != count {
            return Err(format!(
                "the auditor acknowledged {} of {count} events",
                response.receipts.len()
            ));
        }
        tracing::debug!(events = count, up_to_seq = last, "audit events shipped");
        Ok(last)
    }

    async fn prune(&mut self, sent: u64) {
        self.since_prune += sent;
        if self.since_prune < PRUNE_EVERY || self.shipped <= PRUNE_MARGIN {
            return;
        }
        self.since_prune = 0;
        match self.outbox.prune_shipped(self.shipped - PRUNE_MARGIN).await {
            Ok(removed) => tracing::debug!(removed, "shipped audit events pruned from the outbox"),
            Err(error) => tracing::warn!(%error, "pruning the audit outbox failed"),
        }
    }
}

/// How many of `events`, from the first, fit in `max_bytes` encoded (at least one).
fn fitting(events: &[AuditEvent], max_bytes: usize) -> usize {
    let mut total = 0usize;
    let fit = events
        .iter()
        .take_while(|event| {
            total += prost::Message::encoded_len(*event);
            total <= max_bytes
        })
        .count();
    fit.max(1)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use tokio::net::TcpListener;
    use tokio::sync::Mutex;
    use tokio_stream::wrappers::TcpListenerStream;
    use tonic::{Request, Response, Status};
    use trias_proto::v1 as pb;
    use trias_proto::v1::EventKind;
    use trias_proto::v1::auditor_server::{Auditor, AuditorServer};

    use super::*;
    use crate::clock::ManualClock;
    use crate::event::EventDraft;
    use crate::outbox::OutboxConfig;

    /// A fake auditor that records what it is sent and can be told to fail.
    #[derive(Default)]
    struct Fake {
        received: Mutex<Vec<AuditEvent>>,
        batches: AtomicUsize,
        failing: AtomicBool,
    }

    #[derive(Clone)]
    struct FakeService(Arc<Fake>);

    type Empty<T> = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

    #[tonic::async_trait]
    impl Auditor for FakeService {
        async fn append(
            &self,
            request: Request<pb::AppendRequest>,
        ) -> Result<Response<pb::AppendResponse>, Status> {
            if self.0.failing.load(Ordering::SeqCst) {
                return Err(Status::unavailable("down"));
            }
            let request = request.into_inner();
            self.0.batches.fetch_add(1, Ordering::SeqCst);
            let mut received = self.0.received.lock().await;
            let receipts = request
                .events
                .iter()
                .map(|e| pb::AppendReceipt {
                    event_id: e.id.clone(),
                    index: 0,
                })
                .collect();
            for event in request.events {
                // Dedup by id, as the auditor does.
                if !received.iter().any(|r| r.id == event.id) {
                    received.push(event);
                }
            }
            Ok(Response::new(pb::AppendResponse {
                receipts,
                checkpoint: None,
            }))
        }
        type QueryStream = Empty<pb::QueryResponse>;
        async fn query(
            &self,
            _: Request<pb::QueryRequest>,
        ) -> Result<Response<Self::QueryStream>, Status> {
            Err(Status::unimplemented(""))
        }
        async fn get_checkpoint(
            &self,
            _: Request<pb::GetCheckpointRequest>,
        ) -> Result<Response<pb::Checkpoint>, Status> {
            Err(Status::unimplemented(""))
        }
        async fn get_inclusion_proof(
            &self,
            _: Request<pb::GetInclusionProofRequest>,
        ) -> Result<Response<pb::InclusionProof>, Status> {
            Err(Status::unimplemented(""))
        }
        async fn get_consistency_proof(
            &self,
            _: Request<pb::GetConsistencyProofRequest>,
        ) -> Result<Response<pb::ConsistencyProof>, Status> {
            Err(Status::unimplemented(""))
        }
        type WatchAlertsStream = Empty<pb::LogEntry>;
        async fn watch_alerts(
            &self,
            _: Request<pb::WatchAlertsRequest>,
        ) -> Result<Response<Self::WatchAlertsStream>, Status> {
            Err(Status::unimplemented(""))
        }
        type ExportStream = Empty<pb::LogEntry>;
        async fn export(
            &self,
            _: Request<pb::ExportRequest>,
        ) -> Result<Response<Self::ExportStream>, Status> {
            Err(Status::unimplemented(""))
        }
    }

    async fn fake_auditor(fake: Arc<Fake>) -> (String, oneshot::Sender<()>, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(AuditorServer::new(FakeService(fake)))
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        (url, tx, task)
    }

    async fn open(path: &std::path::Path) -> Outbox {
        let clock = Arc::new(ManualClock::at_unix(1_700_000_000));
        Outbox::open(OutboxConfig::new(path, "issuer"), clock)
            .await
            .unwrap()
    }

    async fn record(outbox: &Outbox, n: usize) {
        for i in 0..n {
            outbox
                .record(EventDraft::new(EventKind::TokenIssued).subject(format!("u{i}")))
                .await
                .unwrap();
        }
    }

    /// Waits (at most 10 s) until `done` holds.
    async fn eventually(mut done: impl AsyncFnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !done().await {
            assert!(tokio::time::Instant::now() < deadline, "timed out");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[test]
    fn a_batch_is_cut_to_its_byte_budget_but_never_empty() {
        let event = |n: usize| AuditEvent {
            id: "x".repeat(n),
            ..AuditEvent::default()
        };
        let events: Vec<AuditEvent> = (0..10).map(|_| event(1000)).collect();
        let one = prost::Message::encoded_len(&events[0]);
        assert_eq!(fitting(&events, one * 10), 10);
        assert_eq!(fitting(&events, one * 3 + one / 2), 3);
        // One event larger than the budget still goes alone: the auditor judges it.
        assert_eq!(fitting(&events, 10), 1);
        assert_eq!(fitting(&[], 10), 1);
    }

    #[tokio::test]
    async fn ships_in_order_in_batches_and_marks_shipped() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = open(&dir.path().join("outbox.db")).await;
        record(&outbox, 25).await;
        let fake = Arc::new(Fake::default());
        let (url, _server, _task) = fake_auditor(Arc::clone(&fake)).await;
        let (stop, stopped) = oneshot::channel::<()>();
        let shipper = spawn_shipper(
            outbox.clone(),
            ShipperConfig {
                batch: 10,
                ..ShipperConfig::new(url)
            },
            async {
                let _ = stopped.await;
            },
        );
        eventually(async || outbox.depth().await.unwrap() == 0).await;
        // New events are shipped promptly, woken by the commit.
        record(&outbox, 3).await;
        eventually(async || fake.received.lock().await.len() == 28).await;
        let seqs: Vec<u64> = fake
            .received
            .lock()
            .await
            .iter()
            .map(|e| e.producer_seq)
            .collect();
        assert_eq!(seqs, (1..=28).collect::<Vec<_>>());
        assert!(fake.batches.load(Ordering::SeqCst) >= 3, "batches of 10");
        stop.send(()).unwrap();
        shipper.await.unwrap();
        eventually(async || outbox.depth().await.unwrap() == 0).await;
    }

    #[tokio::test]
    async fn retries_until_the_auditor_answers_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = open(&dir.path().join("outbox.db")).await;
        let fake = Arc::new(Fake::default());
        fake.failing.store(true, Ordering::SeqCst);
        let (url, _server, _task) = fake_auditor(Arc::clone(&fake)).await;
        let (stop, stopped) = oneshot::channel::<()>();
        let shipper = spawn_shipper(outbox.clone(), ShipperConfig::new(url), async {
            let _ = stopped.await;
        });
        record(&outbox, 7).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(outbox.depth().await.unwrap(), 7, "nothing acknowledged");
        fake.failing.store(false, Ordering::SeqCst);
        eventually(async || outbox.depth().await.unwrap() == 0).await;
        assert_eq!(fake.received.lock().await.len(), 7);
        stop.send(()).unwrap();
        shipper.await.unwrap();
    }

    #[tokio::test]
    async fn resumes_after_a_restart_from_the_unshipped_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.db");
        // Recorded while no auditor is reachable: the shipper gives up at shutdown.
        let outbox = open(&path).await;
        let unreachable = {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            format!("http://{}", listener.local_addr().unwrap())
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let shipper = spawn_shipper(outbox.clone(), ShipperConfig::new(unreachable), async {
            let _ = stopped.await;
        });
        record(&outbox, 4).await;
        stop.send(()).unwrap();
        shipper.await.unwrap();
        outbox.close().await;
        drop(outbox);

        let outbox = open(&path).await;
        assert_eq!(outbox.depth().await.unwrap(), 4);
        let fake = Arc::new(Fake::default());
        let (url, _server, _task) = fake_auditor(Arc::clone(&fake)).await;
        let (stop, stopped) = oneshot::channel::<()>();
        let shipper = spawn_shipper(outbox.clone(), ShipperConfig::new(url), async {
            let _ = stopped.await;
        });
        eventually(async || outbox.depth().await.unwrap() == 0).await;
        let seqs: Vec<u64> = fake
            .received
            .lock()
            .await
            .iter()
            .map(|e| e.producer_seq)
            .collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
        stop.send(()).unwrap();
        shipper.await.unwrap();
    }

    #[test]
    fn auditor_urls_are_checked() {
        assert!(check_auditor_url("http://127.0.0.1:7421").is_ok());
        assert!(check_auditor_url("127.0.0.1:7421").is_err());
        assert!(check_auditor_url("http://exa mple").is_err());
    }
}
