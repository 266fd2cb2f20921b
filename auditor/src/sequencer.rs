//! The sequencer: the one writer of the log. It takes queued appends, commits them together
//! (group commit) and only then answers every waiter.
//!
//! For each group it dedups by event id (an id already logged, or seen earlier in the group,
//! gets its existing index), assigns the next indexes, extends the in-memory frontier, signs
//! the checkpoint of the new tree, and writes entries, new nodes and checkpoint in ONE
//! transaction. The frontier is restored from the stored nodes at start and checked against
//! the last signed checkpoint, so the auditor never signs a checkpoint inconsistent with an
//! earlier one: if the stored tree and the last checkpoint disagree it refuses to start.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot, watch};
use trias_proto::v1::AuditEvent;
use trias_runtime::clock::{Clock, timestamp};

use crate::checkpoint::{CheckpointBody, SigningKey};
use crate::error::Error;
use crate::merkle::{Frontier, Hash, leaf_hash};
use crate::store::{Batch, Entry, Store, StoreError, StoredCheckpoint, unix_nanos};

/// The most events committed in one transaction; more queued appends wait for the next.
pub const MAX_GROUP_EVENTS: usize = 10_000;

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
    Close,
}

/// A handle on the sequencer; cheap to clone, all clones feed the one writer task.
#[derive(Debug, Clone)]
pub struct Sequencer {
    requests: mpsc::Sender<Request>,
    latest: watch::Receiver<Arc<StoredCheckpoint>>,
    commits: Arc<AtomicU64>,
    /// Never sent on; its sender is dropped when the writer task ends.
    writer_stopped: watch::Receiver<()>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Append { events, .. } => write!(f, "Append({} events)", events.len()),
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

impl Sequencer {
    /// Restores the log (see [`restore`]) and starts the writer task.
    pub async fn start(
        store: Store,
        key: Arc<SigningKey>,
        clock: Arc<dyn Clock>,
    ) -> Result<Sequencer, RestoreError> {
        let (frontier, last) = restore(&store, &key, clock.as_ref()).await?;
        tracing::info!(tree_size = last.tree_size, "audit log restored");
        let (latest_tx, latest) = watch::channel(Arc::new(last));
        let (requests, queue) = mpsc::channel(1024);
        let (stopped_tx, writer_stopped) = watch::channel(());
        let commits = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            store,
            key,
            clock,
            frontier,
            latest: latest_tx,
            commits: Arc::clone(&commits),
            _stopped: stopped_tx,
        };
        tokio::spawn(writer.run(queue));
        Ok(Sequencer {
            requests,
            latest,
            commits,
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

    /// The latest signed checkpoint.
    pub fn latest(&self) -> Arc<StoredCheckpoint> {
        Arc::clone(&self.latest.borrow())
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
    frontier: Frontier,
    latest: watch::Sender<Arc<StoredCheckpoint>>,
    commits: Arc<AtomicU64>,
    _stopped: watch::Sender<()>,
}

/// How one request of a group fares before the commit.
enum Outcome {
    Indexes(Vec<u64>),
    Refused(Error),
}

impl Writer {
    async fn run(mut self, mut queue: mpsc::Receiver<Request>) {
        let mut held: Option<Request> = None;
        loop {
            let request = match held.take() {
                Some(request) => request,
                None => match queue.recv().await {
                    Some(request) => request,
                    None => break,
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
                    self.commit_group(group).await;
                }
                // Refuse new requests but keep receiving the ones already queued.
                Request::Close => queue.close(),
            }
        }
    }

    async fn commit_group(&mut self, group: Vec<Waiter>) {
        let ids: Vec<&str> = group
            .iter()
            .flat_map(|(events, _)| events.iter().map(|(e, _)| e.id.as_str()))
            .collect();
        let logged = match self.store.logged(&ids).await {
            Ok(logged) => logged,
            Err(error) => {
                let error = Error::from(error);
                for (_, reply) in group {
                    let _ = reply.send(Err(error.clone()));
                }
                return;
            }
        };
        // Known ids: index and leaf hash, from the log and from this group.
        let mut known: HashMap<String, (u64, Hash)> = logged
            .into_iter()
            .map(|(id, (index, leaf))| (id, (index, leaf_hash(&leaf))))
            .collect();
        let mut frontier = self.frontier.clone();
        let mut entries = Vec::new();
        let mut nodes = Vec::new();
        let mut producers: HashMap<String, u64> = HashMap::new();
        let mut outcomes = Vec::with_capacity(group.len());
        let mut replies = Vec::with_capacity(group.len());
        for (events, reply) in group {
            replies.push(reply);
            // First check the whole request, so a refused one adds nothing.
            let mut local: HashMap<&str, Hash> = HashMap::new();
            let mut conflict = None;
            for (event, leaf) in &events {
                let hash = leaf_hash(leaf);
                let earlier = known
                    .get(&event.id)
                    .map(|(_, h)| *h)
                    .or_else(|| local.get(event.id.as_str()).copied());
                if earlier.is_some_and(|h| h != hash) {
                    conflict = Some(event.id.clone());
                    break;
                }
                local.insert(&event.id, hash);
            }
            if let Some(id) = conflict {
                outcomes.push(Outcome::Refused(Error::InvalidArgument(format!(
                    "event id {id:?} is already logged with different content"
                ))));
                continue;
            }
            let mut indexes = Vec::with_capacity(events.len());
            for (event, leaf) in events {
                if let Some((index, _)) = known.get(&event.id) {
                    indexes.push(*index);
                    continue;
                }
                let index = frontier.size();
                let hash = leaf_hash(&leaf);
                nodes.extend(frontier.push(hash));
                let seq = producers.entry(event.producer.clone()).or_default();
                *seq = (*seq).max(event.producer_seq);
                known.insert(event.id.clone(), (index, hash));
                entries.push(Entry::new(index, &event, leaf));
                indexes.push(index);
            }
            outcomes.push(Outcome::Indexes(indexes));
        }

        let checkpoint = if entries.is_empty() {
            // Nothing new: the current checkpoint already covers every index answered.
            Ok(Arc::clone(&self.latest.borrow()))
        } else {
            let checkpoint = sign(&self.key, &frontier, self.clock.as_ref());
            let size = entries.len();
            let batch = Batch {
                entries,
                nodes,
                checkpoint,
                producers: producers.into_iter().collect(),
            };
            match self.store.append(&batch).await {
                Ok(()) => {
                    self.frontier = frontier;
                    self.commits.fetch_add(1, Ordering::Relaxed);
                    let checkpoint = Arc::new(batch.checkpoint);
                    self.latest.send_replace(Arc::clone(&checkpoint));
                    tracing::debug!(events = size, tree_size = checkpoint.tree_size, "appended");
                    Ok(checkpoint)
                }
                Err(error) => {
                    tracing::error!(%error, events = size, "audit log commit failed");
                    self.resync().await;
                    Err(Error::Unavailable)
                }
            }
        };
        for (outcome, reply) in outcomes.into_iter().zip(replies) {
            let answer = match (outcome, &checkpoint) {
                (Outcome::Refused(error), _) => Err(error),
                (Outcome::Indexes(indexes), Ok(checkpoint)) => Ok(Appended {
                    indexes,
                    checkpoint: Arc::clone(checkpoint),
                }),
                (Outcome::Indexes(_), Err(error)) => Err(error.clone()),
            };
            let _ = reply.send(answer);
        }
    }

    /// After a failed commit the database may still hold it (a commit acknowledged by the
    /// server but lost on the way back): the frontier is rebuilt from what is stored.
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
    }
}
