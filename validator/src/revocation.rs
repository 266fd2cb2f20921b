//! Revocations: the revoked token ids and refresh families, followed from the issuer's
//! `WatchRevocations` feed. The feed is resumed from the last sequence number seen after every
//! reconnect, so nothing falls into a gap; entries are forgotten once no token they cover can
//! still be valid.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tonic::transport::Channel;
use trias_proto::v1::issuer_client::IssuerClient;
use trias_proto::v1::revocation::Target;
use trias_proto::v1::{Revocation, WatchRevocationsRequest};
use trias_runtime::clock::{Clock, unix_seconds};

#[derive(Debug, Default)]
struct Sets {
    /// jti → when the revocation may be forgotten (unix seconds).
    tokens: HashMap<String, i64>,
    /// sid → when the revocation may be forgotten.
    families: HashMap<String, i64>,
}

/// The revoked set, as far as the feed has brought it.
#[derive(Debug, Default)]
pub struct Revocations {
    sets: RwLock<Sets>,
    last_seq: AtomicU64,
}

impl Revocations {
    /// The highest sequence number applied; the feed resumes after it.
    pub fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Acquire)
    }

    /// Applies one revocation from the feed.
    pub fn apply(&self, revocation: &Revocation) {
        let expires_at = revocation.expires_at.map_or(i64::MAX, |t| t.seconds);
        {
            let mut sets = self.sets.write().unwrap_or_else(PoisonError::into_inner);
            match &revocation.target {
                Some(Target::TokenId(jti)) => {
                    sets.tokens.insert(jti.clone(), expires_at);
                }
                Some(Target::FamilyId(sid)) => {
                    sets.families.insert(sid.clone(), expires_at);
                }
                None => {}
            }
        }
        self.last_seq.fetch_max(revocation.seq, Ordering::AcqRel);
    }

    /// Whether the token (by jti) or its refresh family (by sid) is revoked.
    pub fn is_revoked(&self, jti: &str, sid: Option<&str>) -> bool {
        let sets = self.sets.read().unwrap_or_else(PoisonError::into_inner);
        sets.tokens.contains_key(jti) || sid.is_some_and(|sid| sets.families.contains_key(sid))
    }

    /// Forgets revocations that can no longer matter at `now`.
    pub fn prune(&self, now: i64) {
        let mut sets = self.sets.write().unwrap_or_else(PoisonError::into_inner);
        sets.tokens.retain(|_, expires_at| *expires_at > now);
        sets.families.retain(|_, expires_at| *expires_at > now);
    }

    /// How many revocations are held.
    pub fn len(&self) -> usize {
        let sets = self.sets.read().unwrap_or_else(PoisonError::into_inner);
        sets.tokens.len() + sets.families.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How often expired revocations are pruned while the feed is quiet.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Follows the issuer's revocation feed until `stop` completes: connects, applies every
/// revocation, and on any error or end of stream reconnects with backoff from the last
/// sequence number seen.
pub async fn follow(
    channel: Channel,
    revocations: Arc<Revocations>,
    clock: Arc<dyn Clock>,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut client = IssuerClient::new(trias_runtime::trace::traced(channel));
    let mut backoff = Duration::from_millis(50);
    let mut prune = tokio::time::interval(PRUNE_EVERY);
    loop {
        let after_seq = revocations.last_seq();
        let opened = tokio::select! {
            () = &mut stop => return,
            opened = client.watch_revocations(WatchRevocationsRequest { after_seq }) => opened,
        };
        match opened {
            Ok(response) => {
                tracing::info!(after_seq, "following the revocation feed");
                let mut stream = response.into_inner();
                loop {
                    tokio::select! {
                        () = &mut stop => return,
                        _ = prune.tick() => revocations.prune(unix_seconds(clock.now())),
                        message = stream.message() => match message {
                            Ok(Some(revocation)) => {
                                revocations.apply(&revocation);
                                backoff = Duration::from_millis(50);
                            }
                            Ok(None) => {
                                tracing::warn!("the revocation feed ended");
                                break;
                            }
                            Err(status) => {
                                tracing::warn!(error = %status.message(), "the revocation feed failed");
                                break;
                            }
                        },
                    }
                }
            }
            Err(status) => {
                tracing::warn!(error = %status.message(), "cannot open the revocation feed");
            }
        }
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use prost_types::Timestamp;

    use super::*;

    fn revocation(seq: u64, target: Target, expires_at: i64) -> Revocation {
        Revocation {
            seq,
            target: Some(target),
            revoked_at: None,
            expires_at: Some(Timestamp {
                seconds: expires_at,
                nanos: 0,
            }),
            reason: "revoked_by_client".into(),
        }
    }

    #[test]
    fn tokens_and_families_are_revoked_until_they_expire() {
        let revocations = Revocations::default();
        revocations.apply(&revocation(1, Target::TokenId("t-1".into()), 100));
        revocations.apply(&revocation(2, Target::FamilyId("f-1".into()), 200));
        assert_eq!(revocations.last_seq(), 2);
        assert!(revocations.is_revoked("t-1", None));
        assert!(revocations.is_revoked("t-2", Some("f-1")));
        assert!(!revocations.is_revoked("t-2", Some("f-2")));
        assert!(!revocations.is_revoked("t-2", None));
        revocations.prune(150);
        assert!(!revocations.is_revoked("t-1", None));
        assert!(revocations.is_revoked("t-2", Some("f-1")));
        revocations.prune(200);
        assert!(revocations.is_empty());
        // The resume point never moves back.
        revocations.apply(&revocation(1, Target::TokenId("t-1".into()), 300));
        assert_eq!(revocations.last_seq(), 2);
    }
}
