//! Token-signing keys: generation with ring, the JWKS, rotation, and signing and verifying
//! access tokens with jsonwebtoken.
//!
//! A key's life is four timestamps: published (in the JWKS), activates (signs new tokens),
//! retires (its successor activates), unpublished (every token it signed has expired). The
//! signer and the JWKS at any instant are derived from them, so several issuers sharing one
//! database agree without coordination.

use std::sync::{Arc, RwLock};

use data_encoding::BASE64URL_NOPAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::digest::{SHA256, digest};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::store::{KeyRecord, Store};

/// The signature algorithms the issuer signs with; each key is bound to one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum KeyAlgorithm {
    #[default]
    EdDSA,
    ES256,
}

impl KeyAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::EdDSA => "EdDSA",
            KeyAlgorithm::ES256 => "ES256",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "EdDSA" => Some(KeyAlgorithm::EdDSA),
            "ES256" => Some(KeyAlgorithm::ES256),
            _ => None,
        }
    }

    fn jwt(self) -> Algorithm {
        match self {
            KeyAlgorithm::EdDSA => Algorithm::EdDSA,
            KeyAlgorithm::ES256 => Algorithm::ES256,
        }
    }
}

/// The claims of a Trias access token (RFC 9068 §2.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub client_id: String,
    pub scope: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<i64>,
    /// The refresh family the token descends from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
}

/// A loaded key. The private part is held only inside jsonwebtoken's `EncodingKey`, which
/// prints nothing of it; `Debug` here shows the kid and the times only.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    pub algorithm: KeyAlgorithm,
    pub public_key: Vec<u8>,
    pub published_at: i64,
    pub activates_at: i64,
    pub retires_at: Option<i64>,
    pub unpublished_at: Option<i64>,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("published_at", &self.published_at)
            .field("activates_at", &self.activates_at)
            .field("retires_at", &self.retires_at)
            .field("unpublished_at", &self.unpublished_at)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    fn from_record(record: &KeyRecord) -> Result<SigningKey, Error> {
        let algorithm = KeyAlgorithm::parse(&record.algorithm)
            .ok_or_else(|| Error::Internal(format!("key {} has unknown algorithm", record.kid)))?;
        let (encoding, decoding) = match algorithm {
            KeyAlgorithm::EdDSA => (
                EncodingKey::from_ed_der(&record.private_pkcs8),
                DecodingKey::from_ed_der(&record.public_key),
            ),
            KeyAlgorithm::ES256 => (
                EncodingKey::from_ec_der(&record.private_pkcs8),
                DecodingKey::from_ec_der(&record.public_key),
            ),
        };
        Ok(SigningKey {
            kid: record.kid.clone(),
            algorithm,
            public_key: record.public_key.clone(),
            published_at: record.published_at,
            activates_at: record.activates_at,
            retires_at: record.retires_at,
            unpublished_at: record.unpublished_at,
            encoding,
            decoding,
        })
    }

    /// Whether the key is in the JWKS at `now`.
    pub fn is_published(&self, now: i64) -> bool {
        self.published_at <= now && self.unpublished_at.is_none_or(|t| now < t)
    }

    /// Whether the key may sign at `now`.
    pub fn is_signing(&self, now: i64) -> bool {
        self.activates_at <= now && self.retires_at.is_none_or(|t| now < t)
    }

    /// The public JWK (RFC 7517; RFC 8037 for Ed25519, RFC 7518 for P-256).
    pub fn jwk(&self) -> trias_proto::v1::Jwk {
        let (kty, crv, x, y) = match self.algorithm {
            KeyAlgorithm::EdDSA => ("OKP", "Ed25519", &self.public_key[..], &[][..]),
            // An uncompressed P-256 point: 0x04 ‖ x ‖ y.
            KeyAlgorithm::ES256 => (
                "EC",
                "P-256",
                self.public_key.get(1..33).unwrap_or_default(),
                self.public_key.get(33..65).unwrap_or_default(),
            ),
        };
        trias_proto::v1::Jwk {
            kid: self.kid.clone(),
            kty: kty.into(),
            crv: crv.into(),
            alg: self.algorithm.as_str().into(),
            r#use: "sig".into(),
            x: BASE64URL_NOPAD.encode(x),
            y: if y.is_empty() {
                String::new()
            } else {
                BASE64URL_NOPAD.encode(y)
            },
        }
    }
}

/// The JSON form of a JWK set, as served at `/.well-known/jwks.json`.
pub fn jwks_json(keys: &[trias_proto::v1::Jwk]) -> serde_json::Value {
    let keys = keys
        .iter()
        .map(|k| {
            let mut jwk = serde_json::json!({
                "kty": k.kty, "crv": k.crv, "kid": k.kid, "alg": k.alg, "use": k.r#use, "x": k.x,
            });
            if !k.y.is_empty() {
                jwk["y"] = serde_json::Value::String(k.y.clone());
            }
            jwk
        })
        .collect::<Vec<_>>();
    serde_json::json!({ "keys": keys })
}

/// Generates a key pair; the kid is derived from the public key.
pub fn generate(
    rng: &SystemRandom,
    algorithm: KeyAlgorithm,
    published_at: i64,
    activates_at: i64,
) -> Result<KeyRecord, Error> {
    let failed = |what: &str| Error::Internal(format!("key generation: {what}"));
    let (pkcs8, public_key) = match algorithm {
        KeyAlgorithm::EdDSA => {
            let doc = Ed25519KeyPair::generate_pkcs8(rng).map_err(|_| failed("ed25519"))?;
            let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).map_err(|_| failed("ed25519"))?;
            (doc.as_ref().to_vec(), pair.public_key().as_ref().to_vec())
        }
        KeyAlgorithm::ES256 => {
            let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, rng)
                .map_err(|_| failed("p-256"))?;
            let pair =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref(), rng)
                    .map_err(|_| failed("p-256"))?;
            (doc.as_ref().to_vec(), pair.public_key().as_ref().to_vec())
        }
    };
    let kid = BASE64URL_NOPAD.encode(&digest(&SHA256, &public_key).as_ref()[..16]);
    Ok(KeyRecord {
        kid,
        algorithm: algorithm.as_str().to_owned(),
        private_pkcs8: pkcs8,
        public_key,
        published_at,
        activates_at,
        retires_at: None,
        unpublished_at: None,
    })
}

/// The issuer's keys, loaded from its database and cached.
#[derive(Debug)]
pub struct Keyring {
    store: Store,
    keys: RwLock<Arc<Vec<SigningKey>>>,
}

impl Keyring {
    /// Loads the keys, creating a first key (signing at once: no token exists yet that a
    /// validator could need an older key for) if the database has none.
    pub async fn open(
        store: Store,
        rng: &SystemRandom,
        algorithm: KeyAlgorithm,
        now: i64,
    ) -> Result<Keyring, Error> {
        let ring = Keyring {
            store,
            keys: RwLock::new(Arc::new(Vec::new())),
        };
        ring.reload().await?;
        if ring.snapshot().is_empty() {
            let key = generate(rng, algorithm, now, now)?;
            ring.store.add_key(&key, 0).await?;
            tracing::info!(kid = %key.kid, algorithm = algorithm.as_str(), "first signing key created");
            ring.reload().await?;
        }
        Ok(ring)
    }

    /// Re-reads the keys from the database (another issuer may have rotated).
    pub async fn reload(&self) -> Result<(), Error> {
        let records = self.store.keys().await?;
        let keys = records
            .iter()
            .map(SigningKey::from_record)
            .collect::<Result<Vec<_>, _>>()?;
        let mut guard = self
            .keys
            .write()
            .map_err(|_| Error::Internal("keyring lock poisoned".into()))?;
        *guard = Arc::new(keys);
        Ok(())
    }

    fn snapshot(&self) -> Arc<Vec<SigningKey>> {
        match self.keys.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Every key, for listing.
    pub fn all(&self) -> Arc<Vec<SigningKey>> {
        self.snapshot()
    }

    /// The key that signs at `now`: the most recently activated current key.
    pub fn signer(&self, now: i64) -> Result<SigningKey, Error> {
        self.snapshot()
            .iter()
            .filter(|k| k.is_signing(now))
            .max_by_key(|k| k.activates_at)
            .cloned()
            .ok_or_else(|| Error::Internal("no signing key is active".into()))
    }

    /// The public keys published at `now`.
    pub fn published(&self, now: i64) -> Vec<trias_proto::v1::Jwk> {
        self.snapshot()
            .iter()
            .filter(|k| k.is_published(now))
            .map(SigningKey::jwk)
            .collect()
    }

    /// Creates a key published at `now` that signs from `now + publish_delay`; the current
    /// key retires then and stays published `linger` seconds longer (the longest token life).
    pub async fn rotate(
        &self,
        rng: &SystemRandom,
        algorithm: KeyAlgorithm,
        now: i64,
        publish_delay: i64,
        linger: i64,
    ) -> Result<SigningKey, Error> {
        let record = generate(rng, algorithm, now, now + publish_delay)?;
        self.store.add_key(&record, linger).await?;
        self.reload().await?;
        SigningKey::from_record(&record)
    }

    /// Signs access-token claims with the key active at `claims.iat`.
    pub fn sign(&self, claims: &AccessClaims) -> Result<(String, String), Error> {
        let key = self.signer(claims.iat)?;
        let mut header = Header::new(key.algorithm.jwt());
        header.typ = Some("at+jwt".into());
        header.kid = Some(key.kid.clone());
        let token = jsonwebtoken::encode(&header, claims, &key.encoding)
            .map_err(|e| Error::Internal(format!("signing: {e}")))?;
        Ok((token, key.kid))
    }

    /// Verifies one of this issuer's own access tokens (for its admin API and for
    /// revocation): a published key with its own algorithm, `typ` at+jwt, `iss`, and, if
    /// given, `aud`. Expiry is checked against `now` with no leeway.
    pub fn verify(
        &self,
        token: &str,
        issuer: &str,
        audience: Option<&str>,
        now: i64,
        check_expiry: bool,
    ) -> Result<AccessClaims, Error> {
        let bad = |why: &str| Error::InvalidToken(format!("access token {why}"));
        let header = jsonwebtoken::decode_header(token).map_err(|_| bad("is malformed"))?;
        if header.typ.as_deref() != Some("at+jwt") {
            return Err(bad("has the wrong type"));
        }
        let kid = header.kid.ok_or_else(|| bad("names no key"))?;
        let keys = self.snapshot();
        let key = keys
            .iter()
            .find(|k| k.kid == kid && k.is_published(now))
            .ok_or_else(|| bad("names an unknown key"))?;
        if header.alg != key.algorithm.jwt() {
            return Err(bad("uses an algorithm its key is not bound to"));
        }
        let mut validation = Validation::new(key.algorithm.jwt());
        validation.set_issuer(&[issuer]);
        match audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        // Expiry is checked below against the injected clock, not the system clock.
        validation.validate_exp = false;
        validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        let data = jsonwebtoken::decode::<AccessClaims>(token, &key.decoding, &validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidAudience => bad("is for another audience"),
                jsonwebtoken::errors::ErrorKind::InvalidIssuer => bad("is from another issuer"),
                jsonwebtoken::errors::ErrorKind::InvalidSignature => bad("has a bad signature"),
                _ => bad("is not valid"),
            })?;
        if check_expiry && data.claims.exp <= now {
            return Err(bad("has expired"));
        }
        Ok(data.claims)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    #[test]
    fn jwks_hold_public_parts_only() {
        let rng = SystemRandom::new();
        for alg in [KeyAlgorithm::EdDSA, KeyAlgorithm::ES256] {
            let record = generate(&rng, alg, 0, 0).unwrap();
            let key = SigningKey::from_record(&record).unwrap();
            let json = jwks_json(&[key.jwk()]).to_string();
            assert!(!json.contains("\"d\""), "{json}");
            assert!(json.contains(&key.kid));
            assert!(!format!("{key:?}").contains(&BASE64URL_NOPAD.encode(&record.private_pkcs8)));
            assert!(!format!("{record:?}").contains("private_pkcs8: ["));
        }
    }

    #[test]
    fn key_life_follows_its_timestamps() {
        let rng = SystemRandom::new();
        let mut record = generate(&rng, KeyAlgorithm::EdDSA, 100, 160).unwrap();
        record.retires_at = Some(1000);
        record.unpublished_at = Some(1400);
        let key = SigningKey::from_record(&record).unwrap();
        assert!(!key.is_published(99) && key.is_published(100) && key.is_published(1399));
        assert!(!key.is_published(1400));
        assert!(!key.is_signing(159) && key.is_signing(160) && key.is_signing(999));
        assert!(!key.is_signing(1000));
    }
}
