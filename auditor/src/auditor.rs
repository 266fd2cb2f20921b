//! The auditor's logic, independent of transport: which appends are accepted, proofs read
//! from stored nodes, queries and exports. `grpc.rs` is a thin mapping onto it.
//!
//! There is deliberately no operation that edits or deletes an entry.

use std::collections::BTreeSet;
use std::sync::Arc;
use trias_runtime::access::TokenChecker;
use trias_runtime::clock::Clock;
use trias_runtime::limit::RateLimiter;
use trias_runtime::tls::Transport;

use prost::Message as _;
use trias_proto::v1::{AuditEvent, Checkpoint, LogEntry};

use crate::checkpoint::Verifier;
use crate::error::Error;
use crate::merkle::{self, Hash, NodeId};
use crate::sequencer::{Appended, Sequencer};
use crate::store::{Filter, Order, Store, StoredCheckpoint, timestamp_of};

/// The largest event accepted, protobuf-encoded.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;
/// The most events one append may carry.
pub const MAX_BATCH_EVENTS: usize = 1000;
/// The largest append message, in bytes: a batch's events together (shippers send at most
/// 4 MiB). A larger message is refused `OUT_OF_RANGE` before it is decoded whole.
pub const MAX_APPEND_BYTES: usize = 16 * 1024 * 1024;
/// The longest event id, in characters.
pub const MAX_ID_CHARS: usize = 128;
/// Query page size when the request names none.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// The largest query page.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// A page is cut short once its leaves pass this many bytes, so that a page (which carries
/// each event twice, decoded and as leaf bytes) stays below gRPC's default 4 MiB message cap.
pub const MAX_PAGE_BYTES: usize = 1536 * 1024;

/// The auditor; cheap to clone.
#[derive(Debug, Clone)]
pub struct Auditor {
    inner: Arc<Inner>,
    /// How gRPC is served and called: mTLS, or plain text in development.
    transport: Transport,
    /// Where security teams' tokens are checked; `None` refuses them all.
    access: Option<TokenChecker>,
    /// Limits the `access_refused` alerts logged per caller; `None` logs every one.
    refusals: Option<Arc<RefusalAlerts>>,
}

/// The limit on `access_refused` alerts per caller, and the clock it reads.
#[derive(Debug)]
struct RefusalAlerts {
    limiter: RateLimiter,
    clock: Arc<dyn Clock>,
}

/// The most callers whose refusals are counted at once.
const REFUSING_CALLERS: usize = 10_000;

#[derive(Debug)]
struct Inner {
    store: Store,
    sequencer: Sequencer,
    verifier: Verifier,
    producers: BTreeSet<String>,
    metrics: crate::metrics::Metrics,
}

/// One page of a query: the entries and, if there are more, the cursor to continue from.
#[derive(Debug, Clone)]
pub struct Page {
    pub entries: Vec<LogEntry>,
    pub next: Option<Cursor>,
}

/// Where the next page of a query starts: after an index (log order), or after an event
/// time and index (a time-range query, which pages in time order: [`Filter::by_time`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    Index(u64),
    Time { time: i64, index: u64 },
}

impl Auditor {
    /// An auditor over an opened store and its started sequencer, accepting appends from
    /// `producers` only.
    pub fn new(
        store: Store,
        sequencer: Sequencer,
        verifier: Verifier,
        producers: impl IntoIterator<Item = String>,
    ) -> Auditor {
        let metrics = crate::metrics::Metrics::new(sequencer.counts());
        Auditor {
            inner: Arc::new(Inner {
                metrics,
                store,
                sequencer,
                verifier,
                producers: producers.into_iter().collect(),
            }),
            transport: Transport::plaintext(),
            access: None,
            refusals: None,
        }
    }

    /// The same auditor, logging at most `quota` `access_refused` alerts per caller.
    pub fn with_refusal_alerts(
        self,
        quota: trias_runtime::limit::Quota,
        clock: Arc<dyn Clock>,
    ) -> Auditor {
        let refusals = RefusalAlerts {
            limiter: RateLimiter::new(quota, REFUSING_CALLERS),
            clock,
        };
        Auditor {
            refusals: Some(Arc::new(refusals)),
            ..self
        }
    }

    /// Whether a refusal of `caller` is to be logged as an alert: false once the caller has
    /// had its quota of them; the call is refused either way.
    pub fn log_refusal_of(&self, caller: &str) -> bool {
        match &self.refusals {
            None => true,
            Some(r) => {
                let logged = r.limiter.acquire(caller, r.clock.now()).is_ok();
                if !logged {
                    self.inner.metrics.refusals_unlogged.inc();
                }
                logged
            }
        }
    }

    /// The same auditor, asking `checker` whether security teams' tokens allow a query.
    pub fn with_access(self, checker: TokenChecker) -> Auditor {
        Auditor {
            access: Some(checker),
            ..self
        }
    }

    pub fn access(&self) -> Option<&TokenChecker> {
        self.access.as_ref()
    }

    /// The same auditor, served and calling out over `transport`.
    pub fn with_transport(self, transport: Transport) -> Auditor {
        Auditor { transport, ..self }
    }

    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// This auditor's Prometheus metrics.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.inner.metrics
    }

    pub fn sequencer(&self) -> &Sequencer {
        &self.inner.sequencer
    }

    /// The public key checkpoints verify with.
    pub fn verifier(&self) -> &Verifier {
        &self.inner.verifier
    }

    /// Whether `producer` is configured to append.
    pub fn is_producer(&self, producer: &str) -> bool {
        self.inner.producers.contains(producer)
    }

    /// Validates a batch from `producer` and logs it; a refused batch adds nothing.
    #[tracing::instrument(name = "append", skip_all, fields(producer, events = events.len()))]
    pub async fn append(&self, producer: &str, events: Vec<AuditEvent>) -> Result<Appended, Error> {
        let started = std::time::Instant::now();
        let result = self.validate_and_append(producer, events).await;
        let elapsed = started.elapsed().as_secs_f64();
        self.inner.metrics.append_seconds.observe(elapsed);
        result
    }

    async fn validate_and_append(
        &self,
        producer: &str,
        events: Vec<AuditEvent>,
    ) -> Result<Appended, Error> {
        let invalid = |message: String| Err(Error::InvalidArgument(message));
        if producer.is_empty() {
            return invalid("producer is required".into());
        }
        if !self.inner.producers.contains(producer) {
            return Err(Error::PermissionDenied(format!(
                "producer {producer:?} may not append to the audit log"
            )));
        }
        if events.is_empty() {
            return invalid("an append needs at least one event".into());
        }
        if events.len() > MAX_BATCH_EVENTS {
            return invalid(format!(
                "a batch holds at most {MAX_BATCH_EVENTS} events, not {}",
                events.len()
            ));
        }
        let mut pending = Vec::with_capacity(events.len());
        for (i, event) in events.into_iter().enumerate() {
            if event.id.is_empty() {
                return invalid(format!("event {i} has no id"));
            }
            if event.id.chars().count() > MAX_ID_CHARS {
                return invalid(format!(
                    "event {i} has an id longer than {MAX_ID_CHARS} characters"
                ));
            }
            if event.producer != producer {
                return invalid(format!(
                    "event {i} ({}) is from producer {:?}, not {producer:?}",
                    event.id, event.producer
                ));
            }
            if event.time.is_none() {
                return invalid(format!("event {i} ({}) has no time", event.id));
            }
            let leaf = leaf(&event);
            if leaf.len() > MAX_EVENT_BYTES {
                return invalid(format!(
                    "event {i} ({}) is {} bytes encoded; at most {MAX_EVENT_BYTES} are accepted",
                    event.id,
                    leaf.len()
                ));
            }
            pending.push((event, leaf));
        }
        self.inner.sequencer.append(pending).await
    }

    /// The latest signed checkpoint.
    pub fn checkpoint(&self) -> Arc<StoredCheckpoint> {
        self.inner.sequencer.latest()
    }

    /// `tree_size`, or the current size for 0, refused if beyond the current size.
    fn size_or_current(&self, tree_size: u64, name: &str) -> Result<u64, Error> {
        let current = self.checkpoint().tree_size;
        match tree_size {
            0 => Ok(current),
            size if size > current => Err(Error::InvalidArgument(format!(
                "{name} {size} is beyond the log's size {current}"
            ))),
            size => Ok(size),
        }
    }

    async fn read_nodes(
        &self,
        ids: &[NodeId],
    ) -> Result<impl Fn(NodeId) -> Result<Hash, Error>, Error> {
        let nodes = self.inner.store.nodes(ids).await?;
        Ok(move |id: NodeId| {
            nodes.get(&id).copied().ok_or_else(|| {
                Error::Internal(format!("node ({}, {}) is missing", id.level, id.index))
            })
        })
    }

    /// The inclusion proof of entry `index` in the tree of `tree_size` (0: the current
    /// size): (tree size, leaf hash, proof).
    pub async fn inclusion_proof(
        &self,
        index: u64,
        tree_size: u64,
    ) -> Result<(u64, Hash, Vec<Hash>), Error> {
        let size = self.size_or_current(tree_size, "tree_size")?;
        let leaf = NodeId::new(0, index);
        let mut ids = merkle::inclusion_nodes(index, size)?;
        ids.push(leaf);
        let read = self.read_nodes(&ids).await?;
        let proof = merkle::inclusion_proof(index, size, &read)?;
        Ok((size, read(leaf)?, proof))
    }

    /// The consistency proof from the tree of `from_size` to that of `to_size` (0: the
    /// current size): (to size, proof).
    pub async fn consistency_proof(
        &self,
        from_size: u64,
        to_size: u64,
    ) -> Result<(u64, Vec<Hash>), Error> {
        let to = self.size_or_current(to_size, "to_size")?;
        let ids = merkle::consistency_nodes(from_size, to)?;
        let read = self.read_nodes(&ids).await?;
        Ok((to, merkle::consistency_proof(from_size, to, &read)?))
    }

    /// One page of entries matching `filter`, after the cursor `after`: in log order, or
    /// for a time-range query ([`Filter::by_time`]) in event-time order.
    pub async fn query_page(
        &self,
        filter: &Filter,
        order: Order,
        after: Option<Cursor>,
        page_size: u32,
    ) -> Result<Page, Error> {
        let page_size = page_size.clamp(1, MAX_PAGE_SIZE);
        let by_time = filter.by_time();
        // One more than asked tells whether there is a next page.
        let store = &self.inner.store;
        let rows: Vec<(u64, Vec<u8>, i64)> = match (by_time, after) {
            (false, None | Some(Cursor::Index(_))) => {
                let after = match after {
                    Some(Cursor::Index(index)) => Some(index),
                    _ => None,
                };
                store
                    .query(filter, order, after, page_size + 1)
                    .await?
                    .into_iter()
                    .map(|(index, leaf)| (index, leaf, 0))
                    .collect()
            }
            (true, None | Some(Cursor::Time { .. })) => {
                let after = match after {
                    Some(Cursor::Time { time, index }) => Some((time, index)),
                    _ => None,
                };
                store
                    .query_by_time(filter, order, after, page_size + 1)
                    .await?
            }
            _ => {
                return Err(Error::InvalidArgument(
                    "page_token belongs to a query with other filters".into(),
                ));
            }
        };
        let mut more = rows.len() > page_size as usize;
        let mut bytes = 0;
        let mut entries = Vec::with_capacity(rows.len().min(page_size as usize));
        let mut last = None;
        for (index, leaf, time) in rows.into_iter().take(page_size as usize) {
            if !entries.is_empty() && bytes + leaf.len() > MAX_PAGE_BYTES {
                more = true;
                break;
            }
            bytes += leaf.len();
            last = Some(if by_time {
                Cursor::Time { time, index }
            } else {
                Cursor::Index(index)
            });
            entries.push(log_entry(index, leaf));
        }
        Ok(Page {
            entries,
            next: if more { last } else { None },
        })
    }

    /// The entries in `[from, to)` (to = 0: the current end); refuses a range beyond the log.
    pub async fn export_range(&self, from: u64, to: u64) -> Result<Vec<LogEntry>, Error> {
        let rows = self.inner.store.range(from, to).await?;
        Ok(rows
            .into_iter()
            .map(|(index, leaf)| log_entry(index, leaf))
            .collect())
    }

    /// Checks an export range: `[from, to)` within the log; `to = 0` means the current end.
    pub fn export_bounds(&self, from: u64, to: u64) -> Result<(u64, u64), Error> {
        let to = self.size_or_current(to, "to_index")?;
        if from > to {
            return Err(Error::InvalidArgument(format!(
                "from_index {from} is beyond to_index {to}"
            )));
        }
        Ok((from, to))
    }

    /// Stops the sequencer (committing what is queued) and closes the database.
    pub async fn close(&self) {
        self.inner.sequencer.close().await;
        self.inner.store.close().await;
    }
}

/// The leaf of an event: its protobuf encoding, whose hash is what the tree holds. prost
/// writes fields in tag order and (built with `btree_map`) map entries in key order, so the
/// same event encodes to the same bytes in every process: a retried append matches what it
/// logged before.
pub fn leaf(event: &AuditEvent) -> Vec<u8> {
    event.encode_to_vec()
}

/// A log entry: the leaf bytes as stored, and the event decoded from them (absent if the
/// stored bytes do not decode, which only a tampered row can cause).
pub fn log_entry(index: u64, leaf: Vec<u8>) -> LogEntry {
    LogEntry {
        index,
        event: AuditEvent::decode(leaf.as_slice()).ok(),
        leaf,
    }
}

/// The protobuf form of a stored checkpoint.
pub fn checkpoint_message(checkpoint: &StoredCheckpoint) -> Checkpoint {
    Checkpoint {
        note: checkpoint.note.clone(),
        tree_size: checkpoint.tree_size,
        root_hash: checkpoint.root.to_vec(),
        time: Some(timestamp_of(checkpoint.time)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;

    #[test]
    fn an_event_encodes_to_the_same_leaf_after_a_round_trip() {
        let mut event = AuditEvent {
            id: "e1".into(),
            producer: "validator".into(),
            producer_seq: 7,
            ..Default::default()
        };
        for i in 0..32 {
            event
                .attributes
                .insert(format!("key-{i}"), format!("value-{i}"));
        }
        let first = leaf(&event);
        // Decoding builds a new map each time: with a hash map its order (and so the bytes)
        // would change from one decoding to the next.
        for _ in 0..8 {
            let again = AuditEvent::decode(first.as_slice()).unwrap();
            assert_eq!(leaf(&again), first);
        }
    }
}
