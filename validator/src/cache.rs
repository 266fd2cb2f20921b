//! The verified-token cache: a token whose header, signature, claim types and issuer passed
//! is remembered, keyed by the SHA-256 of the token, until it expires. A hit skips parsing and
//! the signature; every per-request check (time, audience, scope, revocation, dual control)
//! still runs on every call.
//!
//! Memory is bounded: when full, an expired entry is evicted if there is one, else the oldest.

use std::collections::{BTreeMap, BTreeSet, HashMap};
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
    seq: u64,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<TokenHash, Entry>,
    /// Insertion order: seq → (hash, exp).
    by_age: BTreeMap<u64, (TokenHash, i64)>,
    /// Expiry order: (exp, seq).
    by_exp: BTreeSet<(i64, u64)>,
    next_seq: u64,
}

impl Inner {
    fn remove(&mut self, hash: &TokenHash) {
        if let Some(entry) = self.entries.remove(hash)
            && let Some((_, exp)) = self.by_age.remove(&entry.seq)
        {
            self.by_exp.remove(&(exp, entry.seq));
        }
    }

    fn remove_seq(&mut self, seq: u64) {
        if let Some((hash, exp)) = self.by_age.remove(&seq) {
            self.by_exp.remove(&(exp, seq));
            self.entries.remove(&hash);
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
        while inner.entries.len() >= self.capacity {
            let victim = match inner.by_exp.first() {
                Some(&(first_exp, seq)) if first_exp <= now => Some(seq),
                _ => inner.by_age.keys().next().copied(),
            };
            match victim {
                Some(seq) => inner.remove_seq(seq),
                None => break,
            }
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.by_age.insert(seq, (hash, exp));
        inner.by_exp.insert((exp, seq));
        inner.entries.insert(hash, Entry { claims, seq });
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
            aud: vec!["a".into()],
            client_id: "c".into(),
            scopes: BTreeSet::new(),
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
    fn a_full_cache_evicts_expired_entries_first_then_the_oldest() {
        let cache = TokenCache::new(3);
        let (a, b, c, d, e) = (
            token_hash("a"),
            token_hash("b"),
            token_hash("c"),
            token_hash("d"),
            token_hash("e"),
        );
        cache.insert(a, claims("a", 1000), 0, 0);
        cache.insert(b, claims("b", 50), 0, 0);
        cache.insert(c, claims("c", 1000), 0, 0);
        // At 60, b has expired: it goes, although a is older.
        cache.insert(d, claims("d", 1000), 60, 0);
        assert_eq!(cache.len(), 3);
        assert!(cache.get(&a, 60, 0).is_some());
        assert!(cache.get(&b, 10, 0).is_none());
        // Nothing expired: the oldest (a) goes.
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
