//! The producer's local durable outbox: every audit event is committed to a SQLite file before
//! the producer answers, and a shipper later forwards what is unshipped to the auditor.
//!
//! One writer task owns the write connection and commits concurrent `record`s together (group
//! commit): it takes the first queued request, drains whatever else is queued without waiting,
//! writes them all in one transaction, commits with a full fsync, then answers every waiter.
//! Durability costs one fsync per batch instead of one per event.
//!
//! A commit writes as little as it can: each event is one row keyed by its sequence number
//! (appended at the B-tree's right edge; no secondary index), and shipping moves a single
//! watermark instead of updating rows. The WAL is checkpointed by a separate task on its own
//! connection, so a checkpoint's copying and fsync never stall a commit that waiters are
//! waiting for.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prost::Message as _;
use ring::rand::SystemRandom;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions as _, Connection as _};
use tokio::sync::{mpsc, oneshot, watch};
use trias_proto::v1::AuditEvent;

use crate::clock::Clock;
use crate::event::EventDraft;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    producer_seq INTEGER PRIMARY KEY,
    event BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS shipped (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    up_to_seq INTEGER NOT NULL
);
INSERT OR IGNORE INTO shipped (one, up_to_seq) VALUES (1, 0);
";

/// An outbox from before the watermark (one `outbox` table with a per-row `shipped` flag,
/// always a prefix) is moved into the tables above, in one transaction, when it is opened.
const MIGRATE_V1: &str = "
INSERT INTO events (producer_seq, event) SELECT producer_seq, event FROM outbox;
UPDATE shipped SET up_to_seq =
    (SELECT COALESCE(MAX(producer_seq), 0) FROM outbox WHERE shipped = 1) WHERE one = 1;
DROP TABLE outbox;
";

/// Rows per INSERT statement: each statement is a round trip to SQLite's worker thread, so
/// a batch is written in few of them; a fixed size keeps the prepared-statement variants few.
const ROWS_PER_INSERT: usize = 64;

/// How often the checkpoint task copies the WAL into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Where the outbox lives and who writes to it.
#[derive(Debug, Clone)]
pub struct OutboxConfig {
    /// The SQLite file; created if missing, but its directory must exist.
    pub path: PathBuf,
    /// The producer's identity written into every event, e.g. `issuer`.
    pub producer: String,
    /// The most events committed in one transaction.
    pub max_batch: usize,
}

impl OutboxConfig {
    /// A configuration with the default batch size of 1024.
    pub fn new(path: impl Into<PathBuf>, producer: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            producer: producer.into(),
            max_batch: 1024,
        }
    }
}

/// What went wrong with the outbox.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("cannot open outbox {}: {reason}", path.display())]
    Open { path: PathBuf, reason: String },
    #[error("cannot write to outbox: {0}")]
    Write(String),
    #[error("outbox is closed")]
    Closed,
    #[error("cannot read outbox: {0}")]
    Read(String),
}

/// The sequence number and id an event was recorded under.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub id: String,
    pub producer_seq: u64,
}

/// A handle on the outbox; cheap to clone, and all clones feed the one writer task.
#[derive(Debug, Clone)]
pub struct Outbox {
    requests: mpsc::Sender<Request>,
    reader: SqlitePool,
    commits: Arc<AtomicU64>,
    /// The last committed sequence number; changes after every commit.
    committed: watch::Receiver<u64>,
    /// Never sent on; its sender is dropped when the writer task ends.
    writer_stopped: watch::Receiver<()>,
}

#[allow(
    clippy::large_enum_variant,
    reason = "nearly every request is a record, so boxing would only add an allocation per event"
)]
enum Request {
    Record {
        draft: EventDraft,
        reply: oneshot::Sender<Result<Recorded, OutboxError>>,
    },
    MarkShipped {
        up_to_seq: u64,
        reply: oneshot::Sender<Result<(), OutboxError>>,
    },
    Prune {
        below_seq: u64,
        reply: oneshot::Sender<Result<u64, OutboxError>>,
    },
    Close,
}

type Waiter = (EventDraft, oneshot::Sender<Result<Recorded, OutboxError>>);

impl Outbox {
    /// Opens (creating if needed) the outbox file and starts its writer task.
    pub async fn open(config: OutboxConfig, clock: Arc<dyn Clock>) -> Result<Outbox, OutboxError> {
        let open_error = |reason: String| OutboxError::Open {
            path: config.path.clone(),
            reason,
        };
        create_owner_only(&config.path).map_err(|e| open_error(e.to_string()))?;

        let options = SqliteConnectOptions::new()
            .filename(&config.path)
            .busy_timeout(Duration::from_secs(5));
        let writable = options
            .clone()
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full);
        // The writer never checkpoints: the checkpoint task does, beside it.
        let mut conn = writable
            .clone()
            .pragma("wal_autocheckpoint", "0")
            .connect()
            .await
            .map_err(|e| open_error(e.to_string()))?;
        migrate(&mut conn)
            .await
            .map_err(|e| open_error(e.to_string()))?;
        let checkpointer = writable
            .connect()
            .await
            .map_err(|e| open_error(e.to_string()))?;
        let last_seq = max_seq(&mut conn)
            .await
            .map_err(|e| open_error(e.to_string()))?;
        // Readers get their own connections so a shipper's scan never waits on the writer.
        let reader = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options.read_only(true))
            .await
            .map_err(|e| open_error(e.to_string()))?;

        let max_batch = config.max_batch.max(1);
        let (requests, queue) = mpsc::channel(max_batch);
        let (stopped_tx, writer_stopped) = watch::channel(());
        let (committed_tx, committed) = watch::channel(last_seq);
        let commits = Arc::new(AtomicU64::new(0));
        let (stop_checkpoints, stop) = oneshot::channel();
        let checkpoints = tokio::spawn(checkpoint(checkpointer, stop));
        let writer = Writer {
            conn,
            checkpointer: Some((stop_checkpoints, checkpoints)),
            committed: committed_tx,
            producer: config.producer,
            clock,
            rng: SystemRandom::new(),
            next_seq: last_seq + 1,
            max_batch,
            commits: Arc::clone(&commits),
            _stopped: stopped_tx,
        };
        tokio::spawn(writer.run(queue));
        Ok(Outbox {
            requests,
            reader,
            commits,
            committed,
            writer_stopped,
        })
    }

    /// Records an event, returning only once it is durable on disk (an fsync'd commit).
    pub async fn record(&self, draft: EventDraft) -> Result<Recorded, OutboxError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Record { draft, reply })
            .await
            .map_err(|_| OutboxError::Closed)?;
        answer.await.map_err(|_| OutboxError::Closed)?
    }

    /// Up to `limit` unshipped events with a sequence number above `after_seq`, in order.
    pub async fn unshipped(
        &self,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, OutboxError> {
        let rows: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT event FROM events \
             WHERE producer_seq > MAX(?, (SELECT up_to_seq FROM shipped WHERE one = 1)) \
             ORDER BY producer_seq LIMIT ?",
        )
        .bind(to_sql(after_seq))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.reader)
        .await
        .map_err(|e| OutboxError::Read(e.to_string()))?;
        rows.iter()
            .map(|bytes| {
                AuditEvent::decode(bytes.as_slice()).map_err(|e| OutboxError::Read(e.to_string()))
            })
            .collect()
    }

    /// Marks every event up to and including `up_to_seq` as shipped (acknowledged by the auditor).
    pub async fn mark_shipped(&self, up_to_seq: u64) -> Result<(), OutboxError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::MarkShipped { up_to_seq, reply })
            .await
            .map_err(|_| OutboxError::Closed)?;
        answer.await.map_err(|_| OutboxError::Closed)?
    }

    /// Deletes shipped events numbered below `below_seq`, returning how many went. The
    /// highest-numbered row always stays (an event is shipped only after it is written, and
    /// only shipped rows are pruned below a number no larger than the last shipped one), so
    /// numbering continues after a restart.
    pub async fn prune_shipped(&self, below_seq: u64) -> Result<u64, OutboxError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Prune { below_seq, reply })
            .await
            .map_err(|_| OutboxError::Closed)?;
        answer.await.map_err(|_| OutboxError::Closed)?
    }

    /// The sequence number of the last committed event, which changes after every commit:
    /// a shipper waits on it to send new events promptly. The value seen at subscription
    /// counts as seen. When the writer stops, `changed()` fails.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        let mut receiver = self.committed.clone();
        receiver.mark_unchanged();
        receiver
    }

    /// The sequence number of the last committed event (0 before the first).
    pub fn last_seq(&self) -> u64 {
        *self.committed.borrow()
    }

    /// How many events are not yet shipped.
    pub async fn depth(&self) -> Result<u64, OutboxError> {
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM events WHERE producer_seq > (SELECT up_to_seq FROM shipped WHERE one = 1)",
        )
            .fetch_one(&self.reader)
            .await
            .map_err(|e| OutboxError::Read(e.to_string()))?;
        Ok(from_sql(count))
    }

    /// The time of the oldest event not yet shipped, if any.
    pub async fn oldest_unshipped(&self) -> Result<Option<std::time::SystemTime>, OutboxError> {
        let oldest = self.unshipped(0, 1).await?;
        Ok(oldest.first().and_then(|event| {
            let time = event.time.as_ref()?;
            let seconds = u64::try_from(time.seconds).ok()?;
            let nanos = u32::try_from(time.nanos).ok()?;
            Some(std::time::UNIX_EPOCH + std::time::Duration::new(seconds, nanos))
        }))
    }

    /// Transactions the writer has committed so far; far fewer than events under load.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Stops accepting events, commits what is already queued, and waits for the writer to end.
    /// Reads keep working.
    pub async fn close(&self) {
        // If the send fails the writer is already closing; wait for it all the same.
        let _ = self.requests.send(Request::Close).await;
        let mut stopped = self.writer_stopped.clone();
        while stopped.changed().await.is_ok() {}
    }
}

/// Creates the file readable and writable by its owner only, before SQLite creates it with
/// the default mode; SQLite gives the `-wal` and `-shm` files the same permissions.
fn create_owner_only(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map(drop)
}

/// Creates the tables, moving an outbox of the earlier layout into them.
async fn migrate(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    // IMMEDIATE: take the write lock first, so a concurrent checkpoint cannot invalidate the
    // transaction's snapshot halfway (which SQLite reports as busy without retrying).
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    sqlx::raw_sql(SCHEMA).execute(&mut *tx).await?;
    let v1: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'outbox'",
    )
    .fetch_one(&mut *tx)
    .await?;
    if v1 > 0 {
        sqlx::raw_sql(MIGRATE_V1).execute(&mut *tx).await?;
    }
    tx.commit().await
}

/// Copies the WAL into the database file every [`CHECKPOINT_EVERY`] until told to stop
/// (PASSIVE: it never waits for, nor blocks, the writer or readers), then once more with
/// TRUNCATE so a closed outbox leaves a short WAL.
async fn checkpoint(mut conn: SqliteConnection, mut stop: oneshot::Receiver<()>) {
    loop {
        tokio::select! {
            _ = &mut stop => break,
            () = tokio::time::sleep(CHECKPOINT_EVERY) => {
                if let Err(error) = sqlx::raw_sql("PRAGMA wal_checkpoint(PASSIVE)").execute(&mut conn).await {
                    tracing::warn!(%error, "outbox checkpoint failed");
                }
            }
        }
    }
    let _ = sqlx::raw_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&mut conn)
        .await;
    let _ = conn.close().await;
}

async fn max_seq(conn: &mut SqliteConnection) -> Result<u64, sqlx::Error> {
    let max: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(producer_seq), 0) FROM events")
        .fetch_one(conn)
        .await?;
    Ok(from_sql(max))
}

/// Sequence numbers stay far below 2^63, so the conversions never saturate in practice.
fn to_sql(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

fn from_sql(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

struct Writer {
    conn: SqliteConnection,
    /// Stopped, and waited for, when the writer ends: `close` returns after both.
    checkpointer: Option<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
    producer: String,
    clock: Arc<dyn Clock>,
    rng: SystemRandom,
    next_seq: u64,
    max_batch: usize,
    commits: Arc<AtomicU64>,
    committed: watch::Sender<u64>,
    /// Dropped when the task ends, which is what `Outbox::close` waits for.
    _stopped: watch::Sender<()>,
}

impl Writer {
    async fn run(mut self, mut queue: mpsc::Receiver<Request>) {
        let mut held = None;
        loop {
            let request = match held.take() {
                Some(request) => request,
                None => match queue.recv().await {
                    Some(request) => request,
                    None => break,
                },
            };
            match request {
                Request::Record { draft, reply } => {
                    let mut batch = vec![(draft, reply)];
                    while batch.len() < self.max_batch {
                        match queue.try_recv() {
                            Ok(Request::Record { draft, reply }) => batch.push((draft, reply)),
                            Ok(other) => {
                                held = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.commit_batch(batch).await;
                }
                Request::MarkShipped { up_to_seq, reply } => {
                    let result = sqlx::query(
                        "UPDATE shipped SET up_to_seq = MAX(up_to_seq, ?) WHERE one = 1",
                    )
                    .bind(to_sql(up_to_seq))
                    .execute(&mut self.conn)
                    .await
                    .map(|_| {
                        self.commits.fetch_add(1, Ordering::Relaxed);
                    })
                    .map_err(|e| OutboxError::Write(e.to_string()));
                    let _ = reply.send(result);
                }
                Request::Prune { below_seq, reply } => {
                    // Never the highest row: it carries the numbering across restarts.
                    let result = sqlx::query(
                        "DELETE FROM events WHERE producer_seq < ? \
                         AND producer_seq <= (SELECT up_to_seq FROM shipped WHERE one = 1) \
                         AND producer_seq < (SELECT MAX(producer_seq) FROM events)",
                    )
                    .bind(to_sql(below_seq))
                    .execute(&mut self.conn)
                    .await
                    .map(|done| done.rows_affected())
                    .map_err(|e| OutboxError::Write(e.to_string()));
                    let _ = reply.send(result);
                }
                // Refuse new requests but keep receiving the ones already queued.
                Request::Close => queue.close(),
            }
        }
        if let Err(error) = self.conn.close().await {
            tracing::warn!(%error, "closing the outbox connection failed");
        }
        if let Some((stop, task)) = self.checkpointer.take() {
            let _ = stop.send(());
            let _ = task.await;
        }
    }

    async fn commit_batch(&mut self, batch: Vec<Waiter>) {
        let size = batch.len();
        let first_seq = self.next_seq;
        let mut rows = Vec::with_capacity(size);
        let mut replies = Vec::with_capacity(size);
        let mut failure = None;
        for (seq, (draft, reply)) in (first_seq..).zip(batch) {
            let now = self.clock.now();
            match crate::id::time_ordered(&self.rng, now) {
                Ok(id) => {
                    let event = draft.into_event(id.clone(), &self.producer, seq, now);
                    rows.push((seq, id, event.encode_to_vec()));
                }
                Err(e) => failure = Some(e.to_string()),
            }
            replies.push(reply);
        }
        let result = match failure {
            Some(reason) => Err(reason),
            None => self.insert(&rows).await.map_err(|e| e.to_string()),
        };
        match result {
            Ok(()) => {
                self.next_seq = first_seq + size as u64;
                self.commits.fetch_add(1, Ordering::Relaxed);
                self.committed.send_replace(self.next_seq - 1);
                for ((seq, id, _), reply) in rows.into_iter().zip(replies) {
                    let _ = reply.send(Ok(Recorded {
                        id,
                        producer_seq: seq,
                    }));
                }
            }
            Err(reason) => {
                tracing::error!(%reason, events = size, "outbox commit failed");
                // The batch was rolled back, so its numbers are reused; re-read the file in
                // case the failure left it in a state the counter does not know about.
                if let Ok(last) = max_seq(&mut self.conn).await {
                    self.next_seq = last + 1;
                }
                for reply in replies {
                    let _ = reply.send(Err(OutboxError::Write(reason.clone())));
                }
            }
        }
    }

    async fn insert(&mut self, rows: &[(u64, String, Vec<u8>)]) -> Result<(), sqlx::Error> {
        let mut tx = self.conn.begin().await?;
        for chunk in rows.chunks(ROWS_PER_INSERT) {
            sqlx::QueryBuilder::<sqlx::Sqlite>::new("INSERT INTO events (producer_seq, event) ")
                .push_values(chunk, |mut row, (seq, _, event)| {
                    row.push_bind(to_sql(*seq)).push_bind(event.as_slice());
                })
                .build()
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use trias_proto::v1::EventKind;

    use super::*;
    use crate::clock::ManualClock;

    async fn open(path: &Path) -> Outbox {
        let clock = Arc::new(ManualClock::at_unix(1_700_000_000));
        Outbox::open(OutboxConfig::new(path, "issuer"), clock)
            .await
            .unwrap()
    }

    fn draft(subject: &str) -> EventDraft {
        EventDraft::new(EventKind::TokenIssued)
            .subject(subject)
            .allow()
    }

    #[tokio::test]
    async fn recorded_event_survives_reopening_and_sequence_continues() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.db");
        let outbox = open(&path).await;
        let first = outbox.record(draft("alice")).await.unwrap();
        assert_eq!(first.producer_seq, 1);
        assert_eq!(first.id.len(), 32);
        outbox.close().await;
        drop(outbox);

        let outbox = open(&path).await;
        let events = outbox.unshipped(0, 10).await.unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].id, first.id);
        assert_eq!(events[0].subject, "alice");
        assert_eq!(events[0].producer, "issuer");
        assert_eq!(events[0].time.map(|t| t.seconds), Some(1_700_000_000));
        let second = outbox.record(draft("bob")).await.unwrap();
        assert_eq!(second.producer_seq, 2);
    }

    #[tokio::test]
    async fn event_ids_sort_by_the_time_they_were_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::at_unix(1_700_000_000));
        let outbox = Outbox::open(
            OutboxConfig::new(dir.path().join("outbox.db"), "issuer"),
            Arc::clone(&clock) as Arc<dyn Clock>,
        )
        .await
        .unwrap();
        let mut ids = Vec::new();
        for i in 0..20 {
            ids.push(outbox.record(draft(&format!("user{i}"))).await.unwrap().id);
            clock.advance(Duration::from_millis(1));
        }
        // 1,700,000,000,000 ms is 0x18b_cfe5_6800.
        assert!(ids[0].starts_with("018bcfe56800"), "{}", ids[0]);
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn file_is_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.db");
        let _outbox = open(&path).await;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_records_share_commits() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = open(&dir.path().join("outbox.db")).await;
        let tasks: Vec<_> = (0..2_000)
            .map(|i| {
                let outbox = outbox.clone();
                tokio::spawn(async move { outbox.record(draft(&format!("user{i}"))).await })
            })
            .collect();
        let mut seqs = Vec::new();
        for task in tasks {
            seqs.push(task.await.unwrap().unwrap().producer_seq);
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=2_000).collect::<Vec<_>>());
        assert!(outbox.commits() < 500, "{} commits", outbox.commits());
        assert_eq!(outbox.depth().await.unwrap(), 2_000);
    }

    #[tokio::test]
    async fn shipping_moves_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = open(&dir.path().join("outbox.db")).await;
        for name in ["a", "b", "c", "d"] {
            outbox.record(draft(name)).await.unwrap();
        }
        assert_eq!(outbox.depth().await.unwrap(), 4);
        let page = outbox.unshipped(0, 2).await.unwrap();
        let seqs: Vec<u64> = page.iter().map(|e| e.producer_seq).collect();
        assert_eq!(seqs, [1, 2]);
        let after: Vec<u64> = outbox
            .unshipped(2, 10)
            .await
            .unwrap()
            .iter()
            .map(|e| e.producer_seq)
            .collect();
        assert_eq!(after, [3, 4]);

        outbox.mark_shipped(2).await.unwrap();
        assert_eq!(outbox.depth().await.unwrap(), 2);
        let rest: Vec<u64> = outbox
            .unshipped(0, 10)
            .await
            .unwrap()
            .iter()
            .map(|e| e.producer_seq)
            .collect();
        assert_eq!(rest, [3, 4]);
    }

    #[tokio::test]
    async fn the_oldest_unshipped_event_is_the_first_after_the_watermark() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::at_unix(1_700_000_000));
        let config = OutboxConfig::new(dir.path().join("outbox.db"), "issuer");
        let outbox = Outbox::open(config, clock.clone()).await.unwrap();
        assert_eq!(outbox.oldest_unshipped().await.unwrap(), None);
        outbox.record(draft("a")).await.unwrap();
        clock.advance(Duration::from_secs(7));
        outbox.record(draft("b")).await.unwrap();
        let at = |secs| Some(std::time::UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(outbox.oldest_unshipped().await.unwrap(), at(1_700_000_000));
        outbox.mark_shipped(1).await.unwrap();
        assert_eq!(outbox.oldest_unshipped().await.unwrap(), at(1_700_000_007));
        outbox.mark_shipped(2).await.unwrap();
        assert_eq!(outbox.oldest_unshipped().await.unwrap(), None);
    }

    #[tokio::test]
    async fn subscribers_see_each_commit() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = open(&dir.path().join("outbox.db")).await;
        outbox.record(draft("a")).await.unwrap();
        let mut committed = outbox.subscribe();
        assert!(
            !committed.has_changed().unwrap(),
            "what was there counts as seen"
        );
        outbox.record(draft("b")).await.unwrap();
        committed.changed().await.unwrap();
        assert_eq!(*committed.borrow_and_update(), 2);
        outbox.close().await;
        assert!(
            committed.changed().await.is_err(),
            "a stopped writer ends the feed"
        );
    }

    #[tokio::test]
    async fn pruning_removes_shipped_rows_and_numbering_continues() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.db");
        let outbox = open(&path).await;
        for name in ["a", "b", "c", "d"] {
            outbox.record(draft(name)).await.unwrap();
        }
        // Unshipped rows are never pruned.
        assert_eq!(outbox.prune_shipped(10).await.unwrap(), 0);
        outbox.mark_shipped(4).await.unwrap();
        // Everything below 10 is shipped, but the last row stays.
        assert_eq!(outbox.prune_shipped(10).await.unwrap(), 3);
        outbox.close().await;
        drop(outbox);
        let outbox = open(&path).await;
        assert_eq!(outbox.record(draft("e")).await.unwrap().producer_seq, 5);
    }

    /// An outbox written by the earlier layout (a `shipped` flag per row) opens with its
    /// unshipped events still unshipped and its numbering continued.
    #[tokio::test]
    async fn an_outbox_of_the_earlier_layout_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.db");
        create_owner_only(&path).unwrap();
        let mut old = SqliteConnectOptions::new()
            .filename(&path)
            .connect()
            .await
            .unwrap();
        sqlx::raw_sql(
            "CREATE TABLE outbox (producer_seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, \
             event BLOB NOT NULL, shipped INTEGER NOT NULL DEFAULT 0);",
        )
        .execute(&mut old)
        .await
        .unwrap();
        let clock = ManualClock::at_unix(1_700_000_000);
        for seq in 3..=6u64 {
            let event = draft(&format!("u{seq}")).into_event(
                format!("id{seq}"),
                "issuer",
                seq,
                clock.now(),
            );
            sqlx::query(
                "INSERT INTO outbox (producer_seq, id, event, shipped) VALUES (?, ?, ?, ?)",
            )
            .bind(to_sql(seq))
            .bind(format!("id{seq}"))
            .bind(event.encode_to_vec())
            .bind(i64::from(seq <= 4))
            .execute(&mut old)
            .await
            .unwrap();
        }
        old.close().await.unwrap();

        let outbox = open(&path).await;
        assert_eq!(outbox.depth().await.unwrap(), 2);
        let seqs: Vec<u64> = outbox
            .unshipped(0, 10)
            .await
            .unwrap()
            .iter()
            .map(|e| e.producer_seq)
            .collect();
        assert_eq!(seqs, [5, 6]);
        assert_eq!(outbox.record(draft("next")).await.unwrap().producer_seq, 7);
        outbox.close().await;
    }

    #[tokio::test]
    async fn missing_directory_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("outbox.db");
        let clock = Arc::new(ManualClock::at_unix(0));
        let error = Outbox::open(OutboxConfig::new(&path, "issuer"), clock)
            .await
            .unwrap_err();
        assert!(matches!(error, OutboxError::Open { .. }), "{error}");
        assert!(
            error.to_string().contains(&path.display().to_string()),
            "{error}"
        );
    }

    #[tokio::test]
    async fn closed_outbox_refuses_records_and_keeps_what_was_queued() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = open(&dir.path().join("outbox.db")).await;
        let queued: Vec<_> = (0..50)
            .map(|i| {
                let outbox = outbox.clone();
                tokio::spawn(async move { outbox.record(draft(&format!("u{i}"))).await })
            })
            .collect();
        tokio::task::yield_now().await;
        outbox.close().await;
        let committed = {
            let mut n = 0;
            for task in queued {
                match task.await.unwrap() {
                    Ok(_) => n += 1,
                    Err(OutboxError::Closed) => {}
                    Err(other) => panic!("unexpected {other}"),
                }
            }
            n
        };
        assert_eq!(outbox.depth().await.unwrap(), committed);
        assert!(matches!(
            outbox.record(draft("late")).await,
            Err(OutboxError::Closed)
        ));
        assert!(matches!(
            outbox.mark_shipped(1).await,
            Err(OutboxError::Closed)
        ));
        outbox.close().await;
    }

    #[tokio::test]
    async fn failed_commit_answers_with_an_error_and_uses_no_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.db");
        let outbox = open(&path).await;
        assert_eq!(outbox.record(draft("a")).await.unwrap().producer_seq, 1);

        // Break the table behind the writer's back.
        let mut other = SqliteConnectOptions::new()
            .filename(&path)
            .connect()
            .await
            .unwrap();
        sqlx::raw_sql("ALTER TABLE events RENAME TO moved")
            .execute(&mut other)
            .await
            .unwrap();
        let error = outbox.record(draft("b")).await.unwrap_err();
        assert!(matches!(error, OutboxError::Write(_)), "{error}");

        // Repaired, the next event takes the number the failed one would have had.
        sqlx::raw_sql("ALTER TABLE moved RENAME TO events")
            .execute(&mut other)
            .await
            .unwrap();
        assert_eq!(outbox.record(draft("c")).await.unwrap().producer_seq, 2);
    }
}
