//! The auditor's gRPC API (`trias.v1.Auditor`): a thin mapping onto [`Auditor`].
//!
//! Under mTLS a producer appends only as the identity its name gives
//! (`spiffe://trias/<producer>`), and only if it is a configured producer. Query, proofs,
//! export and alerts need a bearer token that the validator says allows `audit.query` at the
//! auditor (the auditor validates no token itself); `GetCheckpoint` is public, since a
//! checkpoint is what outsiders verify the log with. A refused caller leaves an
//! `access_refused` alert in the log. `WatchAlerts` replays logged alerts, then follows new ones until the
//! caller goes away or the server stops.

use std::pin::Pin;

use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use trias_proto::v1 as pb;
use trias_proto::v1::auditor_server::{self, Auditor as AuditorApi};
use trias_runtime::access::bearer_of;
use trias_runtime::tls::{Caller, identity_of};

use crate::auditor::{
    Auditor, Cursor, DEFAULT_PAGE_SIZE, MAX_APPEND_BYTES, MAX_PAGE_SIZE, checkpoint_message,
};
use crate::detect::Alert;
use crate::error::Error;
use crate::store::{Filter, Order, unix_nanos};

/// The action a security team's token must allow at the auditor's audience (the sample
/// policy maps it to `audit:read`).
pub const AUDIT_ACTION: &str = "audit.query";
/// Entries read from the database per export step.
const EXPORT_CHUNK: u64 = 1000;
/// Entries an export holds ready for a slow reader: with the chunk being read, what one
/// export stream holds in memory at most (the reading task waits while it is full).
const EXPORT_BUFFER: usize = 64;
/// Alerts read from the database per step of a watch.
const ALERT_PAGE: u32 = 100;

type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The gRPC service; wrap with [`AuditorService::into_server`].
#[derive(Debug, Clone)]
pub struct AuditorService {
    auditor: Auditor,
    /// Turns true when the server stops; long-lived streams end on it.
    stop: watch::Receiver<bool>,
}

impl AuditorService {
    /// A service whose alert streams end only when their callers go away.
    pub fn new(auditor: Auditor) -> Self {
        // The sender is dropped: such a stop signal never fires (see `stopping`).
        let (_, stop) = watch::channel(false);
        AuditorService { auditor, stop }
    }

    /// A service whose alert streams also end when `stop` turns true, so that they do not
    /// hold up the server's graceful shutdown.
    pub fn with_stop(auditor: Auditor, stop: watch::Receiver<bool>) -> Self {
        AuditorService { auditor, stop }
    }

    pub fn into_server(self) -> auditor_server::AuditorServer<Self> {
        // Every request but an append is small; an append carries at most MAX_APPEND_BYTES
        // of events, each of which validation still checks against MAX_EVENT_BYTES.
        auditor_server::AuditorServer::new(self).max_decoding_message_size(MAX_APPEND_BYTES)
    }
}

impl AuditorService {
    /// Security teams' calls need a bearer token the validator says allows `audit.query` at
    /// the auditor; a refusal is logged as an `access_refused` alert.
    async fn authorize<T>(&self, request: &Request<T>, rpc: &str) -> Result<(), Status> {
        let caller = Caller::of(self.auditor.transport(), request)?;
        let who = caller.identity().unwrap_or("unauthenticated").to_owned();
        let Some(checker) = self.auditor.access() else {
            let why = "this auditor has no validator to check tokens (validator_url)";
            return Err(self.refuse(&who, rpc, why, "").await);
        };
        let Some(token) = bearer_of(request) else {
            let why = format!("{rpc} needs a bearer token with audit:read");
            let status = self.refuse(&who, rpc, &why, "").await;
            return Err(Status::unauthenticated(status.message().to_owned()));
        };
        let decision = checker.check(token, AUDIT_ACTION, rpc).await?;
        if decision.allowed {
            tracing::info!(caller = %who, subject = %decision.subject, token_id = %decision.token_id, rpc, "security-team call allowed");
            return Ok(());
        }
        let why = format!(
            "the token does not allow {AUDIT_ACTION}: {} ({})",
            decision
                .reason()
                .as_str_name()
                .trim_start_matches("REASON_")
                .to_lowercase(),
            decision.detail
        );
        Err(self.refuse(&who, rpc, &why, &decision.subject).await)
    }

    /// Logs an `access_refused` alert for `caller` and returns the PERMISSION_DENIED to
    /// answer with; if the alert cannot be logged the caller is refused all the same.
    ///
    /// A caller past its quota of such alerts (`limits.refusal_alerts_per_caller`) is
    /// refused all the same, but neither logged nor alerted on: each alert is a commit of
    /// the sequencer, which a flood of refused calls must not monopolise.
    async fn refuse(&self, caller: &str, rpc: &str, why: &str, subject: &str) -> Status {
        if !self.auditor.log_refusal_of(caller) {
            tracing::debug!(caller, rpc, why, "call refused (alert quota spent)");
            return Error::PermissionDenied(why.to_owned()).into();
        }
        let alert = Alert::refused(caller, rpc, why, subject);
        if let Err(error) = self.auditor.sequencer().raise(alert).await {
            tracing::error!(%error, caller, rpc, "could not log a refused call");
        }
        tracing::warn!(caller, rpc, why, "call refused");
        Error::PermissionDenied(why.to_owned()).into()
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// The filter of a query request; refuses an empty or inverted time range.
fn filter(request: &pb::QueryRequest) -> Result<Filter, Error> {
    let time_from = request
        .time
        .as_ref()
        .and_then(|t| t.from.as_ref())
        .map(unix_nanos);
    let time_to = request
        .time
        .as_ref()
        .and_then(|t| t.to.as_ref())
        .map(unix_nanos);
    if let (Some(from), Some(to)) = (time_from, time_to)
        && from >= to
    {
        return Err(Error::InvalidArgument(
            "time.from must be before time.to".into(),
        ));
    }
    Ok(Filter {
        subject: non_empty(request.subject.clone()),
        client_id: non_empty(request.client_id.clone()),
        token_id: non_empty(request.token_id.clone()),
        family_id: non_empty(request.family_id.clone()),
        audience: non_empty(request.audience.clone()),
        action: non_empty(request.action.clone()),
        resource: non_empty(request.resource.clone()),
        decision: (request.decision != 0).then_some(request.decision),
        reason: non_empty(request.reason.clone()),
        kinds: request.kinds.clone(),
        time_from,
        time_to,
    })
}

/// Completes when the stop signal turns true; never, if its sender is gone without it.
async fn stopping(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|stopping| *stopping).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The cursor of an opaque page token: the last index of the previous page (`17`), or its
/// event time and index for a time-ordered query (`t1700000000000000000.17`).
fn cursor(token: &str) -> Result<Option<Cursor>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || Error::InvalidArgument("page_token is not one this auditor issued".into());
    match token.strip_prefix('t') {
        Some(rest) => {
            let (time, index) = rest.split_once('.').ok_or_else(bad)?;
            Ok(Some(Cursor::Time {
                time: time.parse().map_err(|_| bad())?,
                index: index.parse().map_err(|_| bad())?,
            }))
        }
        None => Ok(Some(Cursor::Index(token.parse().map_err(|_| bad())?))),
    }
}

/// The page token of a cursor; [`cursor`] reads it back.
fn page_token(cursor: Cursor) -> String {
    match cursor {
        Cursor::Index(index) => index.to_string(),
        Cursor::Time { time, index } => format!("t{time}.{index}"),
    }
}

#[tonic::async_trait]
impl AuditorApi for AuditorService {
    async fn append(
        &self,
        request: Request<pb::AppendRequest>,
    ) -> Result<Response<pb::AppendResponse>, Status> {
        let caller = Caller::of(self.auditor.transport(), &request)?;
        let request = request.into_inner();
        // Under mTLS a configured producer appends only as itself: `issuer` from
        // spiffe://trias/issuer. (An unknown producer is refused below, whoever asks.)
        if let Caller::Authenticated(id) = &caller
            && self.auditor.is_producer(&request.producer)
            && *id != identity_of(&request.producer)
        {
            let why = format!("{id} may not append as producer {:?}", request.producer);
            return Err(self.refuse(id, "Append", &why, "").await);
        }
        let ids: Vec<String> = request.events.iter().map(|e| e.id.clone()).collect();
        let appended = self
            .auditor
            .append(&request.producer, request.events)
            .await?;
        let receipts = ids
            .into_iter()
            .zip(appended.indexes)
            .map(|(event_id, index)| pb::AppendReceipt { event_id, index })
            .collect();
        Ok(Response::new(pb::AppendResponse {
            receipts,
            checkpoint: Some(checkpoint_message(&appended.checkpoint)),
        }))
    }

    type QueryStream = Streamed<pb::QueryResponse>;

    async fn query(
        &self,
        request: Request<pb::QueryRequest>,
    ) -> Result<Response<Self::QueryStream>, Status> {
        self.authorize(&request, "Query").await?;
        let request = request.into_inner();
        let filter = filter(&request)?;
        let order = match request.order() {
            pb::Order::NewestFirst => Order::NewestFirst,
            pb::Order::OldestFirst => Order::OldestFirst,
        };
        let page_size = match request.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n > MAX_PAGE_SIZE => {
                return Err(Error::InvalidArgument(format!(
                    "page_size is at most {MAX_PAGE_SIZE}"
                ))
                .into());
            }
            n => n,
        };
        let mut after = cursor(&request.page_token)?;
        let mut remaining = (request.limit > 0).then_some(request.limit);
        let auditor = self.auditor.clone();
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(async move {
            loop {
                let size = remaining.map_or(page_size, |r| {
                    u32::try_from(r).unwrap_or(u32::MAX).min(page_size)
                });
                let page = match auditor.query_page(&filter, order, after, size).await {
                    Ok(page) => page,
                    Err(error) => {
                        let _ = tx.send(Err(error.into())).await;
                        return;
                    }
                };
                let sent = page.entries.len() as u64;
                remaining = remaining.map(|r| r.saturating_sub(sent));
                let next = if remaining == Some(0) {
                    None
                } else {
                    page.next
                };
                let response = pb::QueryResponse {
                    entries: page.entries,
                    next_page_token: next.map(page_token).unwrap_or_default(),
                };
                if tx.send(Ok(response)).await.is_err() {
                    return;
                }
                match next {
                    Some(n) => after = Some(n),
                    None => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_checkpoint(
        &self,
        _request: Request<pb::GetCheckpointRequest>,
    ) -> Result<Response<pb::Checkpoint>, Status> {
        Ok(Response::new(checkpoint_message(
            &self.auditor.checkpoint(),
        )))
    }

    async fn get_inclusion_proof(
        &self,
        request: Request<pb::GetInclusionProofRequest>,
    ) -> Result<Response<pb::InclusionProof>, Status> {
        self.authorize(&request, "GetInclusionProof").await?;
        let request = request.into_inner();
        let (tree_size, leaf, hashes) = self
            .auditor
            .inclusion_proof(request.index, request.tree_size)
            .await?;
        Ok(Response::new(pb::InclusionProof {
            index: request.index,
            tree_size,
            leaf_hash: leaf.to_vec(),
            hashes: hashes.iter().map(|h| h.to_vec()).collect(),
        }))
    }

    async fn get_consistency_proof(
        &self,
        request: Request<pb::GetConsistencyProofRequest>,
    ) -> Result<Response<pb::ConsistencyProof>, Status> {
        self.authorize(&request, "GetConsistencyProof").await?;
        let request = request.into_inner();
        let (to_size, hashes) = self
            .auditor
            .consistency_proof(request.from_size, request.to_size)
            .await?;
        Ok(Response::new(pb::ConsistencyProof {
            from_size: request.from_size,
            to_size,
            hashes: hashes.iter().map(|h| h.to_vec()).collect(),
        }))
    }

    type WatchAlertsStream = Streamed<pb::LogEntry>;

    async fn watch_alerts(
        &self,
        request: Request<pb::WatchAlertsRequest>,
    ) -> Result<Response<Self::WatchAlertsStream>, Status> {
        self.authorize(&request, "WatchAlerts").await?;
        let mut cursor = request.into_inner().after_index;
        let auditor = self.auditor.clone();
        // Subscribed before the replay, so an alert logged meanwhile is not missed.
        let mut logged = auditor.sequencer().alerts();
        let mut stop = self.stop.clone();
        let alerts = Filter {
            kinds: vec![pb::EventKind::Alert as i32],
            ..Filter::default()
        };
        let (tx, rx) = mpsc::channel(ALERT_PAGE as usize);
        tokio::spawn(async move {
            loop {
                logged.mark_unchanged();
                let page = match auditor
                    .query_page(
                        &alerts,
                        Order::OldestFirst,
                        Some(Cursor::Index(cursor)),
                        ALERT_PAGE,
                    )
                    .await
                {
                    Ok(page) => page,
                    Err(error) => {
                        let _ = tx.send(Err(error.into())).await;
                        return;
                    }
                };
                for entry in page.entries {
                    cursor = entry.index;
                    if tx.send(Ok(entry)).await.is_err() {
                        return;
                    }
                }
                if page.next.is_some() {
                    continue;
                }
                tokio::select! {
                    changed = logged.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    () = stopping(&mut stop) => return,
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type ExportStream = Streamed<pb::LogEntry>;

    async fn export(
        &self,
        request: Request<pb::ExportRequest>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        self.authorize(&request, "Export").await?;
        let request = request.into_inner();
        let (from, to) = self
            .auditor
            .export_bounds(request.from_index, request.to_index)?;
        let auditor = self.auditor.clone();
        let (tx, rx) = mpsc::channel(EXPORT_BUFFER);
        tokio::spawn(async move {
            let mut at = from;
            while at < to {
                let end = to.min(at + EXPORT_CHUNK);
                match auditor.export_range(at, end).await {
                    Ok(entries) => {
                        for entry in entries {
                            if tx.send(Ok(entry)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(error) => {
                        let _ = tx.send(Err(error.into())).await;
                        return;
                    }
                }
                at = end;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::{Cursor, cursor, page_token};

    #[test]
    fn page_tokens_read_back_and_forgeries_are_refused() {
        for c in [
            Cursor::Index(0),
            Cursor::Index(17),
            Cursor::Time {
                time: 1_700_000_000_000_000_000,
                index: 17,
            },
            Cursor::Time { time: -5, index: 0 },
        ] {
            assert_eq!(cursor(&page_token(c)).unwrap(), Some(c));
        }
        assert_eq!(cursor("").unwrap(), None);
        for bad in ["x", "-1", "t", "t5", "t5.", "t.5", "tx.5", "t5.-1", "17.5"] {
            assert!(cursor(bad).is_err(), "{bad}");
        }
    }
}
