//! The sequencer: the one writer of the log. It takes queued appends, commits them together
//! (group commit) and only then answers every waiter.
//!
//! For each group it dedups by event id (an id already logged, or seen earlier in the group,
//! gets its existing index), assigns the next indexes, runs the detectors over the new
//! entries and appends their alerts after them, extends the in-memory frontier, signs the
//! checkpoint of the new tree, and writes entries, new nodes, checkpoint and detector state in
//! ONE transaction: an alert is never lost while its evidence is logged, nor logged twice.
//! The next group is prepared while that transaction runs (at most one in flight): it is
//! deduplicated against the group in flight as well as the log, built on the tree as it
//! will be, and thrown away (its waiters told the log is unavailable) if the group in
//! flight fails. No one is answered before their own group is durable.
//! A timer also wakes the writer, so a passed check whose grace ends while no appends
//! arrive still gets its `never_issued` decision. The frontier is restored from the stored nodes at start and checked against
//! the last signed checkpoint, so the auditor never signs a checkpoint inconsistent with an
//! earlier one: if the stored tree and the last checkpoint disagree it refuses to start.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prost::Message as _;
use ring::rand::{SecureRandom as _, SystemRandom};
use tokio::sync::{mpsc, oneshot, watch};
use trias_proto::v1::{AuditEvent, Decision, EventKind};
use trias_runtime::clock::{Clock, timestamp};
use trias_runtime::metrics::{Counter, Family};

use crate::checkpoint::{CheckpointBody, SigningKey};
use crate::detect::{self, DetectConfig, Detector, Detectors};
use crate::error::Error;
use crate::merkle::{Frontier, Hash, leaf_hash};
use crate::store::{Batch, Entry, Filter, Order, Store, StoreError, StoredCheckpoint, unix_nanos};

/// The most events committed in one transaction; more queued appends wait for the next.
pub const MAX_GROUP_EVENTS: usize = 10_000;
/// How often the writer wakes without appends to decide passed checks whose grace is over.
const DETECT_TICK: Duration = Duration::from_millis(500);
/// The detector state naming the index below which every passed check is decided.
const NEVER_ISSUED_FROM: &str = "never_issued_from";
/// Denials read back at start to restore burst counting.
const RESTORED_DENIALS: u32 = 50_000;

/// Why the log cannot be opened for appending.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("the log fails its integrity check: {0}")]
    Integrity(String),
}

/// What an append got: the index of each event, in request order, and the checkpoint that
/// covers them all.
#[derive(Debug, Clone)]
pub struct Appended {
    pub indexes: Vec<u64>,
    pub checkpoint: Arc<StoredCheckpoint>,
}

/// An event to log and its encoding (the leaf).
pub type Pending = (AuditEvent, Vec<u8>);

enum Request {
    Append {
        events: Vec<Pending>,
        reply: oneshot::Sender<Result<Appended, Error>>,
    },
    /// An alert the auditor raises itself (a refused caller), logged like a detector's.
    Raise {
        alert: detect::Alert,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Close,
}

/// A handle on the sequencer; cheap to clone, all clones feed the one writer task.
#[derive(Debug, Clone)]
pub struct Sequencer {
    requests: mpsc::Sender<Request>,
    latest: watch::Receiver<Arc<StoredCheckpoint>>,
    /// The index of the newest alert logged, if any.
    alerts: watch::Receiver<Option<u64>>,
    commits: Arc<AtomicU64>,
    counts: Counts,
    /// Never sent on; its sender is dropped when the writer task ends.
    writer_stopped: watch::Receiver<()>,
}

/// What the sequencer counts as it commits, for the auditor's metrics.
#[derive(Debug, Clone)]
pub struct Counts {
    /// Entries newly logged from appends (a retried event is not counted again), by
    /// `producer` (the configured producers only: others are refused before).
    pub appended: Family<Counter>,
    /// Alerts logged, by `kind` (the detector's name).
    pub alerts: Family<Counter>,
}

impl Default for Counts {
    fn default() -> Self {
        Counts {
            appended: Family::new(&["producer"]),
            alerts: Family::new(&["kind"]),
        }
    }
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Append { events, .. } => write!(f, "Append({} events)", events.len()),
            Request::Raise { alert, .. } => write!(f, "Raise({})", alert.detector.name()),
            Request::Close => f.write_str("Close"),
        }
    }
}

/// Reads the last checkpoint, checks it is signed by `key` and that the stored tree has
/// exactly its size and root, and rebuilds the frontier from the stored nodes. An empty
/// database gets its first checkpoint, of the empty tree.
pub async fn restore(
    store: &Store,
    key: &SigningKey,
    clock: &dyn Clock,
) -> Result<(Frontier, StoredCheckpoint), RestoreError> {
    let count = store.entry_count().await?;
    let Some(last) = store.last_checkpoint().await? else {
        if count != 0 {
            return Err(RestoreError::Integrity(format!(
                "{count} entries but no checkpoint"
            )));
        }
        let frontier = Frontier::new();
        let checkpoint = sign(key, &frontier, clock);
        store
            .append(&Batch {
                entries: Vec::new(),
                nodes: Vec::new(),
                checkpoint: checkpoint.clone(),
                producers: Vec::new(),
                state: Vec::new(),
            })
            .await?;
        tracing::info!(origin = key.name(), "new audit log started");
        return Ok((frontier, checkpoint));
    };
    let integrity = |why: String| Err(RestoreError::Integrity(why));
    let body = match key.verifier().verify(&last.note) {
        Ok(body) => body,
        Err(e) => {
            return integrity(format!(
                "the last checkpoint (size {}) does not verify with this auditor's key: {e}",
                last.tree_size
            ));
        }
    };
    if body.tree_size != last.tree_size || body.root != last.root {
        return integrity("the last checkpoint's note and columns disagree".into());
    }
    if count != last.tree_size {
        return integrity(format!(
            "{count} entries but the last checkpoint covers {}",
            last.tree_size
        ));
    }
    let positions = Frontier::positions(last.tree_size);
    let stored = store.nodes(&positions).await?;
    let hashes: Option<Vec<Hash>> = positions.iter().map(|id| stored.get(id).copied()).collect();
    let Some(frontier) = hashes.and_then(|h| Frontier::from_hashes(last.tree_size, h)) else {
        return integrity(format!(
            "nodes of the tree of size {} are missing",
            last.tree_size
        ));
    };
    if frontier.root() != last.root {
        return integrity(format!(
            "the stored tree of size {} does not have the signed root",
            last.tree_size
        ));
    }
    Ok((frontier, last))
}

fn sign(key: &SigningKey, frontier: &Frontier, clock: &dyn Clock) -> StoredCheckpoint {
    let body = CheckpointBody {
        origin: key.name().to_owned(),
        tree_size: frontier.size(),
        root: frontier.root(),
    };
    StoredCheckpoint {
        tree_size: body.tree_size,
        root: body.root,
        note: key.sign(&body),
        time: unix_nanos(&timestamp(clock.now())),
    }
}

/// Loads the detectors' state: each producer's last sequence number, the passed checks not
/// yet decided (their grace starts again now), and the recent denials and burst alerts.
pub async fn load_detectors(
    store: &Store,
    config: DetectConfig,
    now: i64,
) -> Result<Detectors, StoreError> {
    let window = config
        .denial_burst_window
        .max(config.login_failure_window)
        .as_nanos();
    let window = i64::try_from(window).unwrap_or(i64::MAX);
    let grace = i64::try_from(config.never_issued_grace.as_nanos()).unwrap_or(i64::MAX);
    let mut detectors = Detectors::new(config, store.producers().await?);

    let from = store.detector_state(NEVER_ISSUED_FROM).await?.unwrap_or(0);
    let passed = Filter {
        kinds: vec![EventKind::Check as i32],
        decision: Some(Decision::Allow as i32),
        ..Filter::default()
    };
    let mut after = u64::try_from(from).ok().and_then(|f| f.checked_sub(1));
    loop {
        let rows = store
            .query(&passed, Order::OldestFirst, after, 1000)
            .await?;
        let Some((last, _)) = rows.last() else { break };
        after = Some(*last);
        detectors.restore_pending(rows.into_iter().filter_map(|(index, leaf)| {
            let event = AuditEvent::decode(leaf.as_slice()).ok()?;
            (!event.token_id.is_empty()).then(|| detect::PendingCheck {
                index,
                event,
                due: now.saturating_add(grace),
            })
        }));
    }

    let recent = |filter: Filter| Filter {
        time_from: Some(now.saturating_sub(window.saturating_mul(2))),
        ..filter
    };
    let denials = recent(Filter {
        decision: Some(Decision::Deny as i32),
        ..Filter::default()
    });
    let mut rows = store
        .query(&denials, Order::NewestFirst, None, RESTORED_DENIALS)
        .await?;
    rows.reverse();
    for (index, leaf) in rows {
        if let Ok(event) = AuditEvent::decode(leaf.as_slice()) {
            detectors.restore_denial(index, &event);
        }
    }
    for detector in [Detector::DenialBurst, Detector::LoginBruteForce] {
        let bursts = recent(Filter {
            kinds: vec![EventKind::Alert as i32],
            reason: Some(detector.name().to_owned()),
            ..Filter::default()
        });
        for (_, leaf) in store
            .query(&bursts, Order::NewestFirst, None, RESTORED_DENIALS)
            .await?
        {
            if let Ok(alert) = AuditEvent::decode(leaf.as_slice()) {
                detectors.restore_burst_alert(&alert);
            }
        }
    }
    Ok(detectors)
}

/// Records that the event at `index` is logged, as a span in the trace of the request that
/// caused it (its `trace_id` and `span_id`): a check and the logging of its event are one
/// trace, though the event arrived later in a shipped batch. Events without a trace get none.
fn integrated_span(index: u64, event: &AuditEvent) {
    let Some(span_id) = event.attributes.get(trias_runtime::event::SPAN_ID) else {
        return;
    };
    let span = tracing::info_span!(
        "audit.integrate",
        index,
        event_id = %event.id,
        producer = %event.producer,
        producer_seq = event.producer_seq,
        kind = event.kind().as_str_name(),
    );
    if !trias_runtime::trace::set_remote_parent(&span, &event.trace_id, span_id) {
        return;
    }
    // Entered and left at once: the span marks the commit that logged the event.
    drop(span.enter());
}

fn now_nanos(clock: &dyn Clock) -> i64 {
    unix_nanos(&timestamp(clock.now()))
}

impl Sequencer {
    /// Restores the log (see [`restore`]) and starts the writer task with the default
    /// detector settings.
    pub async fn start(
        store: Store,
        key: Arc<SigningKey>,
        clock: Arc<dyn Clock>,
    ) -> Result<Sequencer, RestoreError> {
        Sequencer::start_with(store, key, clock, DetectConfig::default()).await
    }

    /// Restores the log (see [`restore`]) and the detectors' state, and starts the writer
    /// task.
    pub async fn start_with(
        store: Store,
        key: Arc<SigningKey>,
        clock: Arc<dyn Clock>,
        detect: DetectConfig,
    ) -> Result<Sequencer, RestoreError> {
        let (frontier, last) = restore(&store, &key, clock.as_ref()).await?;
        tracing::info!(tree_size = last.tree_size, "audit log restored");
        let detectors = load_detectors(&store, detect, now_nanos(clock.as_ref())).await?;
        let newest_alert = store
            .query(
                &Filter {
                    kinds: vec![EventKind::Alert as i32],
                    ..Filter::default()
                },
                Order::NewestFirst,
                None,
                1,
            )
            .await?
            .first()
            .map(|(index, _)| *index);
        let (latest_tx, latest) = watch::channel(Arc::new(last));
        let (alerts_tx, alerts) = watch::channel(newest_alert);
        let (requests, queue) = mpsc::channel(1024);
        let (stopped_tx, writer_stopped) = watch::channel(());
        let commits = Arc::new(AtomicU64::new(0));
        let counts = Counts::default();
        let writer = Writer {
            store,
            key,
            clock,
            frontier,
            detectors,
            rng: SystemRandom::new(),
            latest: latest_tx,
            alerts: alerts_tx,
            commits: Arc::clone(&commits),
            counts: counts.clone(),
            in_flight: None,
            _stopped: stopped_tx,
        };
        tokio::spawn(writer.run(queue));
        Ok(Sequencer {
            requests,
            latest,
            alerts,
            commits,
            counts,
            writer_stopped,
        })
    }

    /// Logs the events (already validated), returning once they are durable and covered by
    /// a signed checkpoint.
    pub async fn append(&self, events: Vec<Pending>) -> Result<Appended, Error> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Append { events, reply })
            .await
            .map_err(|_| Error::Unavailable)?;
        answer.await.map_err(|_| Error::Unavailable)?
    }

    /// Logs an alert the auditor raises itself, returning once it is durable.
    pub async fn raise(&self, alert: detect::Alert) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Raise { alert, reply })
            .await
            .map_err(|_| Error::Unavailable)?;
        answer.await.map_err(|_| Error::Unavailable)?
    }

    /// The latest signed checkpoint.
    pub fn latest(&self) -> Arc<StoredCheckpoint> {
        Arc::clone(&self.latest.borrow())
    }

    /// What the writer has counted: entries appended by producer, alerts by kind.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// The index of the newest alert logged; changes whenever alerts are logged.
    pub fn alerts(&self) -> watch::Receiver<Option<u64>> {
        self.alerts.clone()
    }

    /// Transactions committed so far; far fewer than appends under load.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Stops accepting appends, commits what is queued, and waits for the writer to end.
    pub async fn close(&self) {
        let _ = self.requests.send(Request::Close).await;
        let mut stopped = self.writer_stopped.clone();
        while stopped.changed().await.is_ok() {}
    }
}

type Waiter = (Vec<Pending>, oneshot::Sender<Result<Appended, Error>>);

struct Writer {
    store: Store,
    key: Arc<SigningKey>,
    clock: Arc<dyn Clock>,
    /// The committed tree (the group in flight, if any, not included).
    frontier: Frontier,
    detectors: Detectors,
    rng: SystemRandom,
    latest: watch::Sender<Arc<StoredCheckpoint>>,
    alerts: watch::Sender<Option<u64>>,
    commits: Arc<AtomicU64>,
    counts: Counts,
    /// The group whose transaction is running, if any.
    in_flight: Option<InFlight>,
    _stopped: watch::Sender<()>,
}

/// How one request of a group fares before the commit.
enum Outcome {
    Indexes(Vec<u64>),
    Refused(Error),
}

/// Who waits for a group's commit: the appends, each with how it fared, and the callers of
/// `raise`.
#[derive(Default)]
struct Waiters {
    appends: Vec<(Outcome, oneshot::Sender<Result<Appended, Error>>)>,
    raised: Vec<oneshot::Sender<Result<(), Error>>>,
}

impl Waiters {
    /// Answers everyone; appends that were not refused get `checkpoint`.
    fn answer(self, checkpoint: &Result<Arc<StoredCheckpoint>, Error>) {
        for (outcome, reply) in self.appends {
            let answer = match (outcome, checkpoint) {
                (Outcome::Refused(error), _) => Err(error),
                (Outcome::Indexes(indexes), Ok(checkpoint)) => Ok(Appended {
                    indexes,
                    checkpoint: Arc::clone(checkpoint),
                }),
                (Outcome::Indexes(_), Err(error)) => Err(error.clone()),
            };
            let _ = reply.send(answer);
        }
        for reply in self.raised {
            let _ = reply.send(checkpoint.as_ref().map(drop).map_err(Clone::clone));
        }
    }
}

/// What a group needs once its transaction is over, whether prepared or in flight.
struct Group {
    /// The tree with this group's entries.
    frontier: Frontier,
    observed: Vec<(u64, AuditEvent)>,
    /// The detectors whose alerts this group logs.
    kinds: Vec<&'static str>,
    alerted: Option<u64>,
    waiters: Waiters,
    /// The ids this group logs, with their index and leaf hash.
    known: HashMap<String, (u64, Hash)>,
}

/// A group made ready to commit: its batch, and what to publish once it is durable.
struct Prepared {
    batch: Batch,
    group: Group,
}

/// The group being committed while the next one is prepared: the writer overlaps preparing
/// a group (the dedup lookup, the detectors, hashing, signing) with the previous group's
/// transaction, and answers nobody before their own group is durable.
struct InFlight {
    task: tokio::task::JoinHandle<(Batch, Result<(), StoreError>)>,
    group: Group,
}

type Committed = Result<(Batch, Result<(), StoreError>), tokio::task::JoinError>;

impl Writer {
    async fn run(mut self, mut queue: mpsc::Receiver<Request>) {
        let mut held: Option<Request> = None;
        let mut tick = tokio::time::interval(DETECT_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let request = match held.take() {
                Some(request) => request,
                None => tokio::select! {
                    request = queue.recv() => match request {
                        Some(request) => request,
                        None => break,
                    },
                    committed = async {
                        match self.in_flight.as_mut() {
                            Some(in_flight) => (&mut in_flight.task).await,
                            None => std::future::pending().await,
                        }
                    } => {
                        if let Some(in_flight) = self.in_flight.take() {
                            // Its waiters are answered, failure included.
                            let _ = self.publish(in_flight, committed).await;
                        }
                        continue;
                    }
                    _ = tick.tick() => {
                        self.detectors.prune();
                        if self.detectors.has_due(now_nanos(self.clock.as_ref())) {
                            // A failed commit is logged and retried on the next tick.
                            self.commit_group(Vec::new(), Waiters::default(), Vec::new()).await;
                        }
                        continue;
                    }
                },
            };
            match request {
                Request::Append { events, reply } => {
                    let mut total = events.len();
                    let mut group = vec![(events, reply)];
                    while total < MAX_GROUP_EVENTS {
                        match queue.try_recv() {
                            Ok(Request::Append { events, reply }) => {
                                total += events.len();
                                group.push((events, reply));
                            }
                            Ok(other) => {
                                held = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.commit_group(group, Waiters::default(), Vec::new())
                        .await;
                }
                Request::Raise { alert, reply } => {
                    let waiters = Waiters {
                        appends: Vec::new(),
                        raised: vec![reply],
                    };
                    self.commit_group(Vec::new(), waiters, vec![alert]).await;
                }
                // Refuse new requests but keep receiving the ones already queued.
                Request::Close => queue.close(),
            }
        }
        // Its waiters are answered, failure included.
        let _ = self.settle().await;
    }

    /// Logs a group of appends and the alerts `raised` by the auditor itself, with the
    /// detectors' alerts, in one transaction, started once the previous group's has
    /// committed. Every waiter is answered once its group is durable, or has failed.
    async fn commit_group(
        &mut self,
        group: Vec<Waiter>,
        waiters: Waiters,
        raised: Vec<detect::Alert>,
    ) {
        // While the previous group commits.
        let prepared = self.prepare(group, waiters, raised).await;
        let previous = self.settle().await;
        let Some(prepared) = prepared else { return };
        if let Err(error) = previous {
            // Prepared on a state that did not commit: the writer has re-read the log.
            prepared.group.waiters.answer(&Err(error));
            return;
        }
        let Prepared { batch, group } = prepared;
        if batch.entries.is_empty() {
            // Nothing new: the current checkpoint already covers every index answered.
            group.waiters.answer(&Ok(Arc::clone(&self.latest.borrow())));
            return;
        }
        let store = self.store.clone();
        let task = tokio::spawn(async move {
            let result = store.append(&batch).await;
            (batch, result)
        });
        self.in_flight = Some(InFlight { task, group });
    }

    /// Waits for the group in flight, if any, and publishes it.
    async fn settle(&mut self) -> Result<(), Error> {
        match self.in_flight.take() {
            Some(mut in_flight) => {
                let committed = (&mut in_flight.task).await;
                self.publish(in_flight, committed).await
            }
            None => Ok(()),
        }
    }

    /// After a group's transaction: on success the new checkpoint is published and its
    /// waiters answered; on failure they are told the log is unavailable and the writer
    /// re-reads the log, dropping the state it had built on the failed group.
    async fn publish(&mut self, in_flight: InFlight, committed: Committed) -> Result<(), Error> {
        let Group {
            frontier,
            observed,
            kinds,
            alerted,
            waiters,
            ..
        } = in_flight.group;
        let outcome = match committed {
            Ok((batch, Ok(()))) => {
                debug_assert_eq!(frontier.size(), batch.checkpoint.tree_size);
                self.frontier = frontier;
                self.commits.fetch_add(1, Ordering::Relaxed);
                let checkpoint = Arc::new(batch.checkpoint);
                self.latest.send_replace(Arc::clone(&checkpoint));
                if alerted.is_some() {
                    self.alerts.send_replace(alerted);
                }
                for (index, event) in &observed {
                    self.counts.appended.with(&[&event.producer]).inc();
                    integrated_span(*index, event);
                }
                for kind in kinds {
                    self.counts.alerts.with(&[kind]).inc();
                }
                tracing::debug!(
                    events = batch.entries.len(),
                    tree_size = checkpoint.tree_size,
                    "appended"
                );
                Ok(checkpoint)
            }
            Ok((batch, Err(error))) => {
                tracing::error!(%error, events = batch.entries.len(), "audit log commit failed");
                Err(Error::Unavailable)
            }
            Err(error) => {
                tracing::error!(%error, "audit log commit task failed");
                Err(Error::Unavailable)
            }
        };
        if outcome.is_err() {
            self.resync().await;
        }
        waiters.answer(&outcome);
        outcome.map(drop)
    }

    /// Dedups the group against the log and the group in flight, assigns indexes, runs the
    /// detectors, extends a copy of the frontier and signs its checkpoint. `None` when the
    /// log could not be read, after answering every waiter.
    async fn prepare(
        &mut self,
        group: Vec<Waiter>,
        mut waiters: Waiters,
        raised: Vec<detect::Alert>,
    ) -> Option<Prepared> {
        let ids: Vec<&str> = group
            .iter()
            .flat_map(|(events, _)| events.iter().map(|(e, _)| e.id.as_str()))
            .collect();
        let logged = match self.store.logged(&ids).await {
            Ok(logged) => logged,
            Err(error) => {
                let error = Error::from(error);
                for (_, reply) in group {
                    waiters
                        .appends
                        .push((Outcome::Refused(error.clone()), reply));
                }
                waiters.answer(&Err(error));
                return None;
            }
        };
        // Known ids, with index and leaf hash: in the log, in the group in flight, or new in
        // this group.
        let logged: HashMap<String, (u64, Hash)> = logged
            .into_iter()
            .map(|(id, (index, leaf))| (id, (index, leaf_hash(&leaf))))
            .collect();
        let in_flight = self.in_flight.as_ref().map(|f| &f.group.known);
        let mut new_ids: HashMap<String, (u64, Hash)> = HashMap::new();
        let known = |new_ids: &HashMap<String, (u64, Hash)>, id: &str| {
            logged
                .get(id)
                .or_else(|| in_flight.and_then(|known| known.get(id)))
                .or_else(|| new_ids.get(id))
                .copied()
        };
        // On the tree as it will be once the group in flight commits; `self.frontier` stays
        // the committed tree, so a failed commit leaves nothing of it behind, even when the
        // log cannot be re-read.
        let mut frontier = match &self.in_flight {
            Some(in_flight) => in_flight.group.frontier.clone(),
            None => self.frontier.clone(),
        };
        let mut entries = Vec::new();
        let mut observed: Vec<(u64, AuditEvent)> = Vec::new();
        let mut nodes = Vec::new();
        let mut producers: HashMap<String, u64> = HashMap::new();
        for (events, reply) in group {
            // First check the whole request, so a refused one adds nothing.
            let mut local: HashMap<&str, Hash> = HashMap::new();
            let mut conflict = None;
            for (event, leaf) in &events {
                let hash = leaf_hash(leaf);
                let earlier = known(&new_ids, &event.id)
                    .map(|(_, h)| h)
                    .or_else(|| local.get(event.id.as_str()).copied());
                if earlier.is_some_and(|h| h != hash) {
                    conflict = Some(event.id.clone());
                    break;
                }
                local.insert(&event.id, hash);
            }
            if let Some(id) = conflict {
                let refused = Error::InvalidArgument(format!(
                    "event id {id:?} is already logged with different content"
                ));
                waiters.appends.push((Outcome::Refused(refused), reply));
                continue;
            }
            let mut indexes = Vec::with_capacity(events.len());
            for (event, leaf) in events {
                if let Some((index, _)) = known(&new_ids, &event.id) {
                    indexes.push(index);
                    continue;
                }
                let index = frontier.size();
                let hash = leaf_hash(&leaf);
                nodes.extend(frontier.push(hash));
                let seq = producers.entry(event.producer.clone()).or_default();
                *seq = (*seq).max(event.producer_seq);
                new_ids.insert(event.id.clone(), (index, hash));
                entries.push(Entry::new(index, &event, leaf));
                observed.push((index, event));
                indexes.push(index);
            }
            waiters.appends.push((Outcome::Indexes(indexes), reply));
        }

        // The detectors see the new entries only (a retried event is not seen twice), and
        // their alerts follow them in the same commit.
        let now = self.clock.now();
        let mut alerts = self.detect(&observed, unix_nanos(&timestamp(now))).await;
        alerts.extend(raised);
        let mut alerted = None;
        let mut kinds = Vec::with_capacity(alerts.len());
        for alert in alerts {
            kinds.push(alert.detector.name());
            let seq = self.detectors.next_alert_seq();
            let event = alert.into_event(self.alert_id(seq), seq, timestamp(now));
            let leaf = crate::auditor::leaf(&event);
            let index = frontier.size();
            nodes.extend(frontier.push(leaf_hash(&leaf)));
            tracing::warn!(index, detector = %event.reason, subject = %event.subject, client_id = %event.client_id, token_id = %event.token_id, "alert");
            let last = producers.entry(event.producer.clone()).or_default();
            *last = (*last).max(seq);
            entries.push(Entry::new(index, &event, leaf));
            alerted = Some(index);
        }
        let decided_below = self.detectors.decided_below(frontier.size());
        let checkpoint = if entries.is_empty() {
            // Not committed: `commit_group` answers with the current checkpoint.
            StoredCheckpoint::clone(&self.latest.borrow())
        } else {
            sign(&self.key, &frontier, self.clock.as_ref())
        };
        Some(Prepared {
            batch: Batch {
                entries,
                nodes,
                checkpoint,
                producers: producers.into_iter().collect(),
                state: vec![(
                    NEVER_ISSUED_FROM.to_owned(),
                    crate::store::to_sql(decided_below),
                )],
            },
            group: Group {
                frontier,
                observed,
                kinds,
                alerted,
                waiters,
                known: new_ids,
            },
        })
    }

    /// Runs the detectors over the new entries and decides the passed checks whose grace
    /// is over, looking their tokens up in the log and in this group.
    async fn detect(&mut self, observed: &[(u64, AuditEvent)], now: i64) -> Vec<detect::Alert> {
        let seen: Vec<(u64, &AuditEvent)> = observed.iter().map(|(i, e)| (*i, e)).collect();
        let mut alerts = self.detectors.observe(&seen, now);
        let due = self.detectors.take_due(now);
        if due.is_empty() {
            return alerts;
        }
        let mut tokens: Vec<&str> = due.iter().map(|c| c.event.token_id.as_str()).collect();
        tokens.sort_unstable();
        tokens.dedup();
        match self.store.token_facts(&tokens).await {
            Ok(mut facts) => {
                // Issued in this group or the one in flight: perhaps not yet in the
                // database.
                let in_flight = self.in_flight.iter().flat_map(|f| f.group.observed.iter());
                for (_, event) in observed.iter().chain(in_flight) {
                    if event.kind() == EventKind::TokenIssued && !event.token_id.is_empty() {
                        facts.entry(event.token_id.clone()).or_default().issued = true;
                    }
                }
                alerts.extend(detect::resolve(due, &facts));
            }
            Err(error) => {
                tracing::warn!(%error, "cannot look up passed checks' tokens; deciding them later");
                self.detectors.restore_pending(due);
            }
        }
        alerts
    }

    /// 128 random bits in hex: no producer can predict (and so pre-empt) an alert's id.
    fn alert_id(&self, seq: u64) -> String {
        let mut bytes = [0u8; 16];
        match self.rng.fill(&mut bytes) {
            Ok(()) => data_encoding::HEXLOWER.encode(&bytes),
            Err(_) => format!("{}-{seq}-{}", detect::PRODUCER, self.frontier.size()),
        }
    }

    /// After a failed commit the database may still hold it (a commit acknowledged by the
    /// server but lost on the way back): the frontier and the detectors' state are rebuilt
    /// from what is stored.
    async fn resync(&mut self) {
        match restore(&self.store, &self.key, self.clock.as_ref()).await {
            Ok((frontier, last)) => {
                self.frontier = frontier;
                self.latest.send_replace(Arc::new(last));
            }
            Err(error) => {
                tracing::error!(%error, "cannot re-read the audit log after a failed commit");
            }
        }
        let config = self.detectors.config().clone();
        match load_detectors(&self.store, config, now_nanos(self.clock.as_ref())).await {
            Ok(detectors) => self.detectors = detectors,
            Err(error) => {
                tracing::error!(%error, "cannot re-read the detectors' state after a failed commit");
            }
        }
    }
}
