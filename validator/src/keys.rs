//! Key sync: the issuer's public keys, fetched over gRPC (`GetJwks`) at start, on a schedule and
//! when a token names a `kid` we do not know, rate-limited so that a flood of made-up kids costs
//! at most one fetch per interval. The last good set stays in use while the issuer is away.
//!
//! Only verification keys exist here: each JWK becomes a jsonwebtoken `DecodingKey` bound to the
//! one algorithm the JWK names. JWKs of any other type or algorithm are ignored.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey};
use tonic::transport::Channel;
use trias_proto::v1::issuer_client::IssuerClient;
use trias_proto::v1::{GetJwksRequest, Jwk};

/// The algorithms the validator accepts, each bound to its key type (RFC 8725 §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    EdDSA,
    ES256,
}

impl KeyAlgorithm {
    /// The JOSE name, as in a header's `alg`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::EdDSA => "EdDSA",
            KeyAlgorithm::ES256 => "ES256",
        }
    }

    /// The algorithm with this exact JOSE name, if the validator accepts it.
    pub fn from_jose(name: &str) -> Option<Self> {
        match name {
            "EdDSA" => Some(KeyAlgorithm::EdDSA),
            "ES256" => Some(KeyAlgorithm::ES256),
            _ => None,
        }
    }

    /// jsonwebtoken's name for it.
    pub fn jwt(self) -> Algorithm {
        match self {
            KeyAlgorithm::EdDSA => Algorithm::EdDSA,
            KeyAlgorithm::ES256 => Algorithm::ES256,
        }
    }
}

/// A public key of the issuer and the one algorithm it may verify.
#[derive(Clone)]
pub struct PublicKey {
    pub kid: Arc<str>,
    pub algorithm: KeyAlgorithm,
    pub decoding: DecodingKey,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl PublicKey {
    /// The key a JWK describes, or `None` for anything but an Ed25519 `EdDSA` key or a P-256
    /// `ES256` key, each with its `alg` stated.
    pub fn from_jwk(jwk: &Jwk) -> Option<PublicKey> {
        if jwk.kid.is_empty() || !(jwk.r#use.is_empty() || jwk.r#use == "sig") {
            return None;
        }
        let (algorithm, decoding) = match (jwk.kty.as_str(), jwk.crv.as_str(), jwk.alg.as_str()) {
            ("OKP", "Ed25519", "EdDSA") => (
                KeyAlgorithm::EdDSA,
                DecodingKey::from_ed_components(&jwk.x).ok()?,
            ),
            ("EC", "P-256", "ES256") => (
                KeyAlgorithm::ES256,
                DecodingKey::from_ec_components(&jwk.x, &jwk.y).ok()?,
            ),
            _ => return None,
        };
        Some(PublicKey {
            kid: jwk.kid.as_str().into(),
            algorithm,
            decoding,
        })
    }
}

/// Where the JWKS comes from: the issuer's gRPC API, or a stand-in in tests.
pub trait JwksSource: Send + Sync + std::fmt::Debug + 'static {
    /// Fetches the published keys; the error is for the log.
    fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<Vec<Jwk>, String>> + Send + '_>>;
}

/// The issuer's `GetJwks` over a (lazily connecting, reconnecting) gRPC channel.
#[derive(Debug, Clone)]
pub struct GrpcJwks {
    client: IssuerClient<trias_runtime::trace::Traced>,
}

impl GrpcJwks {
    pub fn new(channel: Channel) -> Self {
        GrpcJwks {
            client: IssuerClient::new(trias_runtime::trace::traced(channel)),
        }
    }
}

/// How long one JWKS fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);

impl JwksSource for GrpcJwks {
    fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<Vec<Jwk>, String>> + Send + '_>> {
        let mut client = self.client.clone();
        Box::pin(async move {
            let call = client.get_jwks(GetJwksRequest {});
            match tokio::time::timeout(FETCH_TIMEOUT, call).await {
                Ok(Ok(response)) => Ok(response.into_inner().keys),
                Ok(Err(status)) => Err(format!("GetJwks: {}", status.message())),
                Err(_) => Err("GetJwks timed out".to_owned()),
            }
        })
    }
}

type KeyMap = HashMap<String, Arc<PublicKey>>;

/// The current key set and the means to refresh it.
#[derive(Debug)]
pub struct Keys {
    current: RwLock<Arc<KeyMap>>,
    source: Box<dyn JwksSource>,
    /// When the last fetch started; guards the unknown-kid rate limit and serialises fetches.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    min_interval: Duration,
    fetches: AtomicU64,
}

impl Keys {
    /// An empty key set; call [`Keys::refresh`] or [`Keys::initial_sync`] to fill it.
    pub fn new(source: Box<dyn JwksSource>, unknown_kid_min_interval: Duration) -> Keys {
        Keys {
            current: RwLock::new(Arc::new(HashMap::new())),
            source,
            last_fetch: tokio::sync::Mutex::new(None),
            min_interval: unknown_kid_min_interval,
            fetches: AtomicU64::new(0),
        }
    }

    /// The key with this kid in the current set.
    pub fn get(&self, kid: &str) -> Option<Arc<PublicKey>> {
        self.snapshot().get(kid).cloned()
    }

    fn snapshot(&self) -> Arc<KeyMap> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The kids of the current set, sorted.
    pub fn kids(&self) -> Vec<String> {
        let mut kids: Vec<String> = self.snapshot().keys().cloned().collect();
        kids.sort();
        kids
    }

    /// How many fetches have been made (successful or not).
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Fetches the JWKS now and replaces the set; on failure the old set stays.
    pub async fn refresh(&self) -> Result<usize, String> {
        let mut last = self.last_fetch.lock().await;
        self.fetch_locked(&mut last).await
    }

    async fn fetch_locked(&self, last: &mut Option<Instant>) -> Result<usize, String> {
        *last = Some(Instant::now());
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let jwks = self.source.fetch().await?;
        let mut map = KeyMap::new();
        for jwk in &jwks {
            match PublicKey::from_jwk(jwk) {
                Some(key) => {
                    map.insert(key.kid.to_string(), Arc::new(key));
                }
                None => {
                    tracing::warn!(kid = %jwk.kid, kty = %jwk.kty, alg = %jwk.alg, "ignoring a JWK the validator does not accept")
                }
            }
        }
        let count = map.len();
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(map);
        Ok(count)
    }

    /// The key for a kid not in the current set: fetches the JWKS once more, unless a fetch
    /// happened less than the minimum interval ago. Concurrent callers wait for one fetch.
    pub async fn get_or_refresh(&self, kid: &str) -> Option<Arc<PublicKey>> {
        if let Some(key) = self.get(kid) {
            return Some(key);
        }
        let mut last = self.last_fetch.lock().await;
        // Someone else's fetch may have brought it while we waited.
        if let Some(key) = self.get(kid) {
            return Some(key);
        }
        if last.is_some_and(|at| at.elapsed() < self.min_interval) {
            return None;
        }
        if let Err(error) = self.fetch_locked(&mut last).await {
            tracing::warn!(%error, "refreshing the JWKS for an unknown kid failed");
        }
        drop(last);
        self.get(kid)
    }

    /// Fetches until the first success or until `timeout` has passed.
    pub async fn initial_sync(&self, timeout: Duration) -> Result<usize, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.refresh().await {
                Ok(count) => return Ok(count),
                Err(error) => {
                    if tokio::time::Instant::now() + backoff >= deadline {
                        return Err(error);
                    }
                    tracing::warn!(%error, "waiting for the issuer's JWKS");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A JWKS that can be changed and switched off.
    #[derive(Debug, Default)]
    struct FakeIssuer {
        keys: Mutex<Vec<Jwk>>,
        down: Mutex<bool>,
    }

    impl JwksSource for Arc<FakeIssuer> {
        fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<Vec<Jwk>, String>> + Send + '_>> {
            Box::pin(async move {
                if *self.down.lock().unwrap() {
                    return Err("issuer down".into());
                }
                Ok(self.keys.lock().unwrap().clone())
            })
        }
    }

    // RFC 8037 appendix A.2 (Ed25519) and a P-256 point from RFC 7515 appendix A.3.
    const ED_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
    const EC_X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
    const EC_Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";

    fn ed(kid: &str) -> Jwk {
        Jwk {
            kid: kid.into(),
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            alg: "EdDSA".into(),
            r#use: "sig".into(),
            x: ED_X.into(),
            y: String::new(),
        }
    }

    fn ec(kid: &str) -> Jwk {
        Jwk {
            kid: kid.into(),
            kty: "EC".into(),
            crv: "P-256".into(),
            alg: "ES256".into(),
            r#use: "sig".into(),
            x: EC_X.into(),
            y: EC_Y.into(),
        }
    }

    fn keys(issuer: &Arc<FakeIssuer>, interval: Duration) -> Keys {
        Keys::new(Box::new(Arc::clone(issuer)), interval)
    }

    #[tokio::test]
    async fn each_key_is_bound_to_its_one_algorithm_and_others_are_ignored() {
        let issuer = Arc::new(FakeIssuer::default());
        let mut hmac = ed("hmac");
        hmac.kty = "oct".into();
        hmac.alg = "HS256".into();
        let mut mismatched = ed("mismatched");
        mismatched.alg = "ES256".into();
        let mut encryption = ed("enc");
        encryption.r#use = "enc".into();
        *issuer.keys.lock().unwrap() = vec![ed("a"), ec("b"), hmac, mismatched, encryption];
        let keys = keys(&issuer, Duration::from_secs(10));
        assert_eq!(keys.refresh().await.unwrap(), 2);
        assert_eq!(keys.kids(), ["a", "b"]);
        assert_eq!(keys.get("a").unwrap().algorithm, KeyAlgorithm::EdDSA);
        assert_eq!(keys.get("b").unwrap().algorithm, KeyAlgorithm::ES256);
    }

    #[tokio::test]
    async fn a_flood_of_unknown_kids_causes_one_fetch_per_interval() {
        let issuer = Arc::new(FakeIssuer::default());
        *issuer.keys.lock().unwrap() = vec![ed("a")];
        let keys = Arc::new(keys(&issuer, Duration::from_secs(3600)));
        keys.refresh().await.unwrap();
        let before = keys.fetches();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200 {
            let keys = Arc::clone(&keys);
            tasks.spawn(async move { keys.get_or_refresh(&format!("made-up-{i}")).await });
        }
        while let Some(found) = tasks.join_next().await {
            assert!(found.unwrap().is_none());
        }
        // The initial refresh was less than an interval ago: no fetch at all.
        assert_eq!(keys.fetches(), before);
    }

    #[tokio::test]
    async fn an_unknown_kid_fetches_once_when_the_interval_has_passed() {
        let issuer = Arc::new(FakeIssuer::default());
        *issuer.keys.lock().unwrap() = vec![ed("a")];
        let keys = Arc::new(keys(&issuer, Duration::from_millis(1)));
        keys.refresh().await.unwrap();
        std::thread::sleep(Duration::from_millis(5));
        issuer.keys.lock().unwrap().push(ec("new"));
        // The rotated-in key is found on first sight, without a failed check.
        assert!(keys.get_or_refresh("new").await.is_some());
        assert_eq!(keys.fetches(), 2);
        // A made-up kid right after: the interval (1 ms) may or may not have passed, but a
        // hundred of them in a row cost far fewer than a hundred fetches once it is longer.
        let slow = Arc::new(self::keys(&issuer, Duration::from_secs(3600)));
        slow.refresh().await.unwrap();
        for i in 0..100 {
            assert!(slow.get_or_refresh(&format!("x{i}")).await.is_none());
        }
        assert_eq!(slow.fetches(), 1);
    }

    #[tokio::test]
    async fn the_last_good_set_survives_an_unreachable_issuer() {
        let issuer = Arc::new(FakeIssuer::default());
        *issuer.keys.lock().unwrap() = vec![ed("a")];
        let keys = keys(&issuer, Duration::from_millis(0));
        keys.refresh().await.unwrap();
        *issuer.down.lock().unwrap() = true;
        assert!(keys.refresh().await.is_err());
        assert!(keys.get_or_refresh("b").await.is_none());
        assert!(keys.get("a").is_some());
    }

    #[tokio::test]
    async fn start_fails_after_a_bounded_time_without_an_issuer() {
        let issuer = Arc::new(FakeIssuer::default());
        *issuer.down.lock().unwrap() = true;
        let keys = keys(&issuer, Duration::from_secs(10));
        let started = Instant::now();
        assert!(keys.initial_sync(Duration::from_millis(300)).await.is_err());
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(keys.fetches() >= 2, "it retried");
    }
}
