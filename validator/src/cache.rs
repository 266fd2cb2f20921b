//! The verified-token cache: a token whose header, signature, claim types and issuer passed
//! is remembered, keyed by the SHA-256 of the token, until it expires. A hit skips parsing and
//! the signature; every per-request check (time, audience, scope, revocation, dual control)
//! still runs on every call.
//!
//! Memory is bounded: when full, the entry that expires first is evicted (an expired one if
//! there is any).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use ring::digest::{SHA256, digest};

use crate::check::Claims;

/// The cache key: SHA-256 of the token, so the cache never holds a bearer value.
pub type TokenHash = [u8; 32];

/// Hashes a token for the cache.
pub fn token_hash(token: &str) -> TokenHash {
    let mut hash = [0u8; 32];
    hash.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
    hash
}

#[derive(Debug)]
struct Entry {
    claims: Arc<Claims>,
    /// The entry's place in `by_exp`.
    order: (i64, u64),
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<TokenHash, Entry>,
    /// Expiry order: (exp plus skew, insertion number) → hash. The one order serves both
    /// expiry and eviction, so an entry costs one ordered node, not two.
    by_exp: BTreeMap<(i64, u64), TokenHash>,
    next_seq: u64,
}

impl Inner {
    fn remove(&mut self, hash: &TokenHash) {
        if let Some(entry) = self.entries.remove(hash) {
            self.by_exp.remove(&entry.order);
        }
    }
}

/// A bounded map from token hash to verified claims.
#[derive(Debug)]
pub struct TokenCache {
    inner: Mutex<Inner>,
    capacity: usize,
}

impl TokenCache {
    pub fn new(capacity: usize) -> TokenCache {
        TokenCache {
            inner: Mutex::new(Inner::default()),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The verified claims of a token seen before, if still cached; an entry past `expired_at`
    /// (its `exp` plus the skew, in unix seconds) is dropped instead.
    pub fn get(&self, hash: &TokenHash, now: i64, skew: i64) -> Option<Arc<Claims>> {
        let mut inner = self.lock();
        let entry = inner.entries.get(hash)?;
        if now >= entry.claims.exp.saturating_add(skew) {
            inner.remove(hash);
            return None;
        }
        Some(Arc::clone(&entry.claims))
    }

    /// Remembers verified claims until their `exp` (plus `skew`).
    pub fn insert(&self, hash: TokenHash, claims: Arc<Claims>, now: i64, skew: i64) {
        let exp = claims.exp.saturating_add(skew);
        if now >= exp {
            return;
        }
        let mut inner = self.lock();
        inner.remove(&hash);
        // Full: the entry that expires first goes — an expired one if there is any, else
        // the one with the least time left (with one token lifetime, the oldest).
        while inner.entries.len() >= self.capacity {
            match inner.by_exp.pop_first() {
                Some((_, victim)) => {
                    inner.entries.remove(&victim);
                }
                None => break,
            }
        }
        let order = (exp, inner.next_seq);
        inner.next_seq += 1;
        inner.by_exp.insert(order, hash);
        inner.entries.insert(hash, Entry { claims, order });
    }

    /// How many tokens are cached.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    fn claims(jti: &str, exp: i64) -> Arc<Claims> {
        Arc::new(Claims {
            iss: "i".into(),
            sub: "s".into(),
            aud: Box::new(["a".into()]),
            client_id: "c".into(),
            scopes: Box::default(),
            iat: 0,
            exp,
            nbf: None,
            jti: jti.into(),
            sid: None,
            acr: None,
            kid: "k".into(),
        })
    }

    #[test]
    fn entries_live_until_expiry() {
        let cache = TokenCache::new(10);
        let hash = token_hash("token-1");
        cache.insert(hash, claims("1", 100), 50, 5);
        assert_eq!(cache.get(&hash, 104, 5).unwrap().jti, "1");
        assert!(cache.get(&hash, 105, 5).is_none());
        assert!(cache.is_empty());
        // Already expired tokens are not remembered.
        cache.insert(hash, claims("1", 100), 200, 5);
        assert!(cache.is_empty());
    }

    #[test]
    fn a_full_cache_evicts_expired_entries_first_then_the_soonest_to_expire() {
        let cache = TokenCache::new(3);
        let (a, b, c, d, e) = (
            token_hash("a"),
            token_hash("b"),
            token_hash("c"),
            token_hash("d"),
            token_hash("e"),
        );
        cache.insert(a, claims("a", 900), 0, 0);
        cache.insert(b, claims("b", 50), 0, 0);
        cache.insert(c, claims("c", 1000), 0, 0);
        // At 60, b has expired: it goes, although a is older.
        cache.insert(d, claims("d", 1000), 60, 0);
        assert_eq!(cache.len(), 3);
        assert!(cache.get(&a, 60, 0).is_some());
        assert!(cache.get(&b, 10, 0).is_none());
        // Nothing expired: a, which expires first, goes.
        cache.insert(e, claims("e", 1000), 60, 0);
        assert!(cache.get(&a, 60, 0).is_none());
        for hash in [c, d, e] {
            assert!(cache.get(&hash, 60, 0).is_some());
        }
        assert_eq!(cache.len(), 3);
    }

    #[test]
    fn the_key_is_a_hash_of_the_token() {
        assert_eq!(token_hash("x"), token_hash("x"));
        assert_ne!(token_hash("x"), token_hash("y"));
    }
}
