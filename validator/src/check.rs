//! The check pipeline: small, independent checks, each deciding one thing and naming its
//! [`Reason`] when it denies. The validator runs them in order (see `validator.rs`); later
//! checks such as token transparency or DPoP slot in as further functions.
//!
//! The token checks follow RFC 8725 and RFC 9068 rather than any library's defaults: the size
//! is capped before anything is parsed, the header is parsed here (strictly: canonical
//! base64url, one JSON object, no duplicate members), the algorithm is the one bound to the
//! key, `typ` must be `at+jwt`, `crit` is refused, and `jku`/`x5u`/`jwk`/`x5c` are never looked at.
//! jsonwebtoken verifies the signature only — the header and the claims are parsed here, once —
//! and times are checked here against the injected clock with the configured skew.

use std::fmt;
use std::sync::Arc;

use data_encoding::BASE64URL_NOPAD;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};
use trias_policy::{ActionError, Policy};
use trias_proto::v1::Reason;

use crate::keys::{KeyAlgorithm, PublicKey};

/// Why a check denied, with a detail safe to show the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub reason: Reason,
    pub detail: String,
}

impl Denial {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Denial {
            reason,
            detail: detail.into(),
        }
    }
}

/// The result of one check.
pub type Outcome<T = ()> = Result<T, Denial>;

/// A reason's name as the audit log writes it: lowercase, without the `REASON_` prefix.
pub fn reason_name(reason: Reason) -> String {
    let name = reason.as_str_name();
    name.strip_prefix("REASON_").unwrap_or(name).to_lowercase()
}

// ----- the token's shape -----

/// Refuses a token over the size cap, before any parsing or cryptography.
pub fn size(token: &str, max_bytes: usize) -> Outcome {
    if token.len() > max_bytes {
        return Err(Denial::new(
            Reason::TokenTooLarge,
            format!("token is larger than {max_bytes} bytes"),
        ));
    }
    Ok(())
}

/// The three base64url parts of a JWS compact serialization.
#[derive(Debug, Clone, Copy)]
pub struct Parts<'a> {
    pub header: &'a str,
    pub payload: &'a str,
    pub signature: &'a str,
    /// `header.payload`: what the signature is over (RFC 7515 §5.2).
    pub signing_input: &'a str,
}

/// Splits the token into its three parts and checks each is canonical unpadded base64url
/// (RFC 7515 §2): a JWE (five parts), padding or stray bits are malformed.
pub fn split(token: &str) -> Outcome<Parts<'_>> {
    let malformed = |why: &str| Denial::new(Reason::Malformed, why);
    let mut pieces = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (pieces.next(), pieces.next(), pieces.next(), pieces.next())
    else {
        return Err(malformed("not a JWS compact serialization"));
    };
    // An empty signature (as `alg: none` has) is left to the algorithm and signature checks.
    if header.is_empty() || payload.is_empty() {
        return Err(malformed("a part of the token is empty"));
    }
    // data-encoding rejects padding, characters outside the alphabet and non-zero trailing
    // bits, so each accepted part has exactly one encoding.
    for part in [header, payload, signature] {
        BASE64URL_NOPAD
            .decode(part.as_bytes())
            .map_err(|_| malformed("a part is not canonical base64url"))?;
    }
    Ok(Parts {
        header,
        payload,
        signature,
        signing_input: &token[..header.len() + 1 + payload.len()],
    })
}

/// A JSON object whose members are unique: duplicate names are a known way to make two
/// parsers disagree on a token (RFC 8725 §2.8 of confusion), so they are refused.
#[derive(Debug, Clone, Default)]
pub struct UniqueObject(pub Map<String, Value>);

impl<'de> Deserialize<'de> for UniqueObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = UniqueObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<UniqueObject, A::Error> {
                let mut map = Map::new();
                while let Some((key, value)) = access.next_entry::<String, Value>()? {
                    if map.contains_key(&key) {
                        return Err(serde::de::Error::custom(format!("duplicate member {key}")));
                    }
                    map.insert(key, value);
                }
                Ok(UniqueObject(map))
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

/// Decodes a base64url part holding a JSON object with unique members.
fn json_object(part: &str) -> Option<Map<String, Value>> {
    let bytes = BASE64URL_NOPAD.decode(part.as_bytes()).ok()?;
    serde_json::from_slice::<UniqueObject>(&bytes)
        .ok()
        .map(|o| o.0)
}

/// The JOSE header members the validator looks at. Everything else — notably `jku`, `x5u`,
/// `jwk` and `x5c` — is ignored: keys come only from the issuer's JWKS.
#[derive(Debug, Clone)]
pub struct JoseHeader {
    pub alg: String,
    pub typ: Option<String>,
    pub kid: Option<String>,
    pub cty: Option<String>,
    pub crit: bool,
}

/// Parses the header: a JSON object with a string `alg`.
pub fn header(parts: &Parts<'_>) -> Outcome<JoseHeader> {
    let malformed = |why: &str| Denial::new(Reason::Malformed, why);
    let object =
        json_object(parts.header).ok_or_else(|| malformed("the header is not a JSON object"))?;
    let text = |name: &str| -> Outcome<Option<String>> {
        match object.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(malformed(&format!("header {name} is not a string"))),
        }
    };
    let alg = text("alg")?.ok_or_else(|| malformed("the header has no alg"))?;
    Ok(JoseHeader {
        alg,
        typ: text("typ")?,
        kid: text("kid")?,
        cty: text("cty")?,
        crit: object.contains_key("crit"),
    })
}

/// Only EdDSA and ES256 are ever accepted: never `none`, never an HMAC (RFC 8725 §3.1, §3.2).
pub fn algorithm(header: &JoseHeader) -> Outcome<KeyAlgorithm> {
    KeyAlgorithm::from_jose(&header.alg).ok_or_else(|| {
        Denial::new(
            Reason::UnsupportedAlgorithm,
            format!("algorithm {:?} is not accepted", header.alg),
        )
    })
}

/// `typ` must say this is an access token (RFC 9068 §2.1; RFC 8725 §3.11). Media types compare
/// case-insensitively and may carry the `application/` prefix.
pub fn token_type(header: &JoseHeader) -> Outcome {
    let typ = header.typ.as_deref().unwrap_or("").to_ascii_lowercase();
    if typ == "at+jwt" || typ == "application/at+jwt" {
        Ok(())
    } else {
        Err(Denial::new(Reason::WrongType, "typ is not at+jwt"))
    }
}

/// The validator understands no JWS extension, so any `crit` is refused (RFC 7515 §4.1.11).
pub fn critical(header: &JoseHeader) -> Outcome {
    if header.crit {
        return Err(Denial::new(
            Reason::UnknownCritical,
            "crit names an extension the validator does not understand",
        ));
    }
    Ok(())
}

/// An access token's payload is a claims set, never a nested JWT (RFC 8725 §2.8).
pub fn content_type(header: &JoseHeader) -> Outcome {
    match header.cty.as_deref() {
        None => Ok(()),
        Some(_) => Err(Denial::new(
            Reason::Malformed,
            "nested or typed content is not an access token",
        )),
    }
}

/// The `kid` the header names; a token without one names no key of ours.
pub fn kid(header: &JoseHeader) -> Outcome<&str> {
    header
        .kid
        .as_deref()
        .filter(|kid| !kid.is_empty())
        .ok_or_else(|| Denial::new(Reason::UnknownKey, "the token names no key"))
}

/// The header's algorithm must be the one the key is bound to (RFC 8725 §3.1).
pub fn key_algorithm(algorithm: KeyAlgorithm, key: &PublicKey) -> Outcome {
    if algorithm != key.algorithm {
        return Err(Denial::new(
            Reason::UnsupportedAlgorithm,
            format!(
                "key {} is bound to {}, not {}",
                key.kid,
                key.algorithm.as_str(),
                algorithm.as_str()
            ),
        ));
    }
    Ok(())
}

/// Verifies the signature with the key's one algorithm and returns the payload's claims.
///
/// jsonwebtoken verifies the signature over the signing input and does nothing else. Its
/// `decode` would also parse the header and the claims a second time, each by rules of its
/// own: a `jwk` or `x5c` member of a shape it does not expect, members no check here reads,
/// refused a validly signed token as malformed (found by fuzzing, see docs/hardening.md),
/// and its required-claims check read a negative `exp` as missing. Parsing once, here,
/// keeps every decision with the checks that name it.
pub fn signature(parts: &Parts<'_>, key: &PublicKey) -> Outcome<Map<String, Value>> {
    // Err is a signature that is not base64url (`split` refused those already) or a key ring
    // will not use: either way the signature does not verify with this key.
    let verified = jsonwebtoken::crypto::verify(
        parts.signature,
        parts.signing_input.as_bytes(),
        &key.decoding,
        key.algorithm.jwt(),
    )
    .unwrap_or(false);
    if !verified {
        return Err(Denial::new(
            Reason::BadSignature,
            "the signature does not verify",
        ));
    }
    json_object(parts.payload)
        .ok_or_else(|| Denial::new(Reason::Malformed, "the claims are not a JSON object"))
}

// ----- claims -----

/// The claims of a verified access token, typed (RFC 9068 §2.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub iss: Arc<str>,
    pub sub: String,
    /// `aud` as written: one string, or the members of an array.
    pub aud: Box<[String]>,
    pub client_id: String,
    /// Sorted, without repeats. A slice rather than a set: the verified-token cache holds a
    /// hundred thousand of these, and a B-tree node costs more than the scopes themselves.
    pub scopes: Box<[String]>,
    pub iat: i64,
    pub exp: i64,
    pub nbf: Option<i64>,
    pub jti: String,
    /// The refresh family, if any.
    pub sid: Option<String>,
    /// How the subject authenticated (`mfa` after a second factor), if the token says.
    pub acr: Option<String>,
    /// The key that verified the token.
    pub kid: Arc<str>,
}

impl Claims {
    /// `scope` as RFC 7662 writes it: space-separated.
    pub fn scope(&self) -> String {
        self.scopes.join(" ")
    }
}

/// Types the claims RFC 9068 requires (`iss`, `exp`, `aud`, `sub`, `client_id`, `iat`, `jti`)
/// and the optional ones the validator uses; anything absent or mistyped is `missing_claim`.
pub fn claims(raw: &Map<String, Value>, kid: &str) -> Outcome<Claims> {
    let missing = |name: &str| {
        Denial::new(
            Reason::MissingClaim,
            format!("claim {name} is missing or has the wrong type"),
        )
    };
    let string = |name: &str| -> Outcome<String> {
        match raw.get(name) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            _ => Err(missing(name)),
        }
    };
    let optional_string = |name: &str| -> Outcome<Option<String>> {
        match raw.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(missing(name)),
        }
    };
    let time = |name: &str| -> Outcome<Option<i64>> {
        match raw.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => numeric_date(n).map(Some).ok_or_else(|| missing(name)),
            Some(_) => Err(missing(name)),
        }
    };
    let aud = match raw.get("aud") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| missing("aud"))
            })
            .collect::<Outcome<Vec<_>>>()?,
        _ => return Err(missing("aud")),
    };
    let mut scopes: Vec<String> = optional_string("scope")?
        .map(|s| s.split_ascii_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    scopes.sort_unstable();
    scopes.dedup();
    Ok(Claims {
        iss: string("iss")?.into(),
        exp: time("exp")?.ok_or_else(|| missing("exp"))?,
        aud: aud.into_boxed_slice(),
        sub: string("sub")?,
        client_id: string("client_id")?,
        iat: time("iat")?.ok_or_else(|| missing("iat"))?,
        jti: string("jti")?,
        nbf: time("nbf")?,
        sid: optional_string("sid")?.filter(|s| !s.is_empty()),
        acr: optional_string("acr")?.filter(|s| !s.is_empty()),
        scopes: scopes.into_boxed_slice(),
        kid: kid.into(),
    })
}

/// A NumericDate (RFC 7519 §2): seconds, possibly fractional; truncated to whole seconds.
fn numeric_date(n: &serde_json::Number) -> Option<i64> {
    if let Some(i) = n.as_i64() {
        return Some(i);
    }
    let f = n.as_f64()?;
    #[allow(
        clippy::cast_possible_truncation,
        reason = "the range is checked just before"
    )]
    (f.is_finite() && f.abs() < 1e15).then(|| f.floor() as i64)
}

/// `iss` is exactly the configured issuer (RFC 8725 §3.8).
pub fn issuer(claims: &Claims, expected: &str) -> Outcome {
    if *claims.iss != *expected {
        return Err(Denial::new(
            Reason::WrongIssuer,
            "the token is from another issuer",
        ));
    }
    Ok(())
}

// ----- the token stage, in order -----

/// A token whose shape and header passed, waiting for the key its kid names.
#[derive(Debug, Clone)]
pub struct Unverified<'a> {
    pub parts: Parts<'a>,
    pub algorithm: KeyAlgorithm,
    pub kid: String,
}

/// The checks that need no key, in the validator's order, after [`size`] (which comes first
/// of all, before the token is even hashed for the cache): the three canonical parts, the
/// header, the algorithm allow-list, `typ`, `crit`, `cty`, and a kid.
pub fn unverified(token: &str) -> Outcome<Unverified<'_>> {
    let parts = split(token)?;
    let header = header(&parts)?;
    let algorithm = algorithm(&header)?;
    token_type(&header)?;
    critical(&header)?;
    content_type(&header)?;
    let kid = kid(&header)?.to_owned();
    Ok(Unverified {
        parts,
        algorithm,
        kid,
    })
}

/// The checks with the key the kid names, in order: the algorithm bound to the key, the
/// signature, the typed claims, and the exact issuer.
pub fn verified(token: &Unverified<'_>, key: &PublicKey, expected_issuer: &str) -> Outcome<Claims> {
    key_algorithm(token.algorithm, key)?;
    let raw = signature(&token.parts, key)?;
    let claims = claims(&raw, &token.kid)?;
    issuer(&claims, expected_issuer)?;
    Ok(claims)
}

// ----- per request -----

/// `exp`, `nbf` and `iat` against `now`, allowing `skew` seconds either way.
pub fn time(claims: &Claims, now: i64, skew: i64) -> Outcome {
    if now >= claims.exp.saturating_add(skew) {
        return Err(Denial::new(Reason::Expired, "the token has expired"));
    }
    if claims.nbf.is_some_and(|nbf| nbf > now.saturating_add(skew)) {
        return Err(Denial::new(
            Reason::NotYetValid,
            "the token is not valid yet",
        ));
    }
    if claims.iat > now.saturating_add(skew) {
        return Err(Denial::new(
            Reason::NotYetValid,
            "the token was issued in the future",
        ));
    }
    Ok(())
}

/// `aud` is exactly the caller: one string, or an array of that one string (RFC 8725 §3.9;
/// a token for several services is not accepted by any of them).
/// Under mTLS the caller's identity decides its audience; a request naming another one is
/// denied, so a backend cannot borrow a token meant for a different service.
pub fn declared_audience(bound: &str, declared: Option<&str>) -> Outcome {
    match declared {
        Some(declared) if declared != bound => Err(Denial::new(
            Reason::WrongAudience,
            format!("the caller is bound to audience {bound}, not {declared}"),
        )),
        _ => Ok(()),
    }
}

pub fn audience(claims: &Claims, caller: &str) -> Outcome {
    match &*claims.aud {
        [only] if only == caller => Ok(()),
        _ => Err(Denial::new(
            Reason::WrongAudience,
            format!("the token is not for {caller}"),
        )),
    }
}

/// The token carries the scope the policy says the action needs at the audience.
pub fn scope<'p>(
    policy: &'p Policy,
    claims: &Claims,
    audience: &str,
    action: &str,
) -> Outcome<&'p str> {
    let needed = policy
        .scope_for_action(audience, action)
        .map_err(|error| match error {
            ActionError::UnknownAudience(_) | ActionError::UnknownAction { .. } => {
                Denial::new(Reason::UnknownAction, error.to_string())
            }
        })?;
    if claims
        .scopes
        .binary_search_by(|s| s.as_str().cmp(needed))
        .is_err()
    {
        return Err(Denial::new(
            Reason::InsufficientScope,
            format!("{action} needs scope {needed}"),
        ));
    }
    Ok(needed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use serde_json::json;

    use super::*;

    fn b64(value: &Value) -> String {
        BASE64URL_NOPAD.encode(value.to_string().as_bytes())
    }

    fn token(header: &Value, payload: &Value) -> String {
        format!("{}.{}.c2ln", b64(header), b64(payload))
    }

    fn parsed_header(header: Value) -> Outcome<JoseHeader> {
        let t = token(&header, &json!({}));
        header_of(&t)
    }

    fn header_of(token: &str) -> Outcome<JoseHeader> {
        super::header(&split(token)?)
    }

    fn valid_claims() -> Map<String, Value> {
        json!({
            "iss": "https://issuer.example", "sub": "alice", "aud": "payments",
            "client_id": "web", "scope": "payments:create payments:read", "iat": 1000,
            "exp": 1300, "jti": "t-1", "sid": "f-1"
        })
        .as_object()
        .unwrap()
        .clone()
    }

    #[test]
    fn the_size_cap_comes_first() {
        assert!(size(&"a".repeat(8192), 8192).is_ok());
        assert_eq!(
            size(&"a".repeat(8193), 8192).unwrap_err().reason,
            Reason::TokenTooLarge
        );
    }

    #[test]
    fn garbage_and_truncated_tokens_are_malformed() {
        for bad in [
            "",
            "garbage",
            "a.b",
            "a.b.c.d.e",
            "..",
            "eyJhbGciOiJFZERTQSJ9..c2ln",
            ".e30.c2ln",
            "eyJhbGciOiJFZERTQSJ9.e30=.c2ln",
            "eyJhbGciOiJFZERTQSJ9.e3+.c2ln",
            "bm90IGpzb24.e30.c2ln",
            "W10.e30.c2ln",
        ] {
            let result = split(bad).and_then(|p| header(&p));
            assert_eq!(result.unwrap_err().reason, Reason::Malformed, "{bad:?}");
        }
    }

    #[test]
    fn non_canonical_base64url_is_malformed() {
        // "e30" is `{}`; "e31" decodes to the same bytes with non-zero trailing bits.
        assert!(split("e30.e30.c2ln").is_ok());
        for bad in ["e31.e30.c2ln", "e30.e31.c2ln", "e30.e30.c2lu="] {
            assert_eq!(split(bad).unwrap_err().reason, Reason::Malformed, "{bad}");
        }
    }

    #[test]
    fn duplicate_header_members_are_malformed() {
        let raw = BASE64URL_NOPAD.encode(br#"{"alg":"EdDSA","alg":"none","typ":"at+jwt"}"#);
        let result = header_of(&format!("{raw}.e30.c2ln"));
        assert_eq!(result.unwrap_err().reason, Reason::Malformed);
    }

    #[test]
    fn only_eddsa_and_es256_are_accepted() {
        for alg in [
            "none", "None", "HS256", "HS512", "RS256", "PS256", "ES384", "eddsa", "",
        ] {
            let h = parsed_header(json!({"alg": alg, "typ": "at+jwt"})).unwrap();
            assert_eq!(
                algorithm(&h).unwrap_err().reason,
                Reason::UnsupportedAlgorithm,
                "{alg}"
            );
        }
        for (alg, expected) in [
            ("EdDSA", KeyAlgorithm::EdDSA),
            ("ES256", KeyAlgorithm::ES256),
        ] {
            let h = parsed_header(json!({"alg": alg})).unwrap();
            assert_eq!(algorithm(&h).unwrap(), expected);
        }
        let h = parsed_header(json!({"alg": 5}));
        assert_eq!(h.unwrap_err().reason, Reason::Malformed);
    }

    #[test]
    fn typ_must_be_at_jwt() {
        for ok in [
            "at+jwt",
            "AT+JWT",
            "application/at+jwt",
            "Application/At+JWT",
        ] {
            let h = parsed_header(json!({"alg": "EdDSA", "typ": ok})).unwrap();
            assert!(token_type(&h).is_ok(), "{ok}");
        }
        for bad in [json!("JWT"), json!("jwt"), json!("at+jwt2"), Value::Null] {
            let mut header = json!({"alg": "EdDSA"});
            if !bad.is_null() {
                header["typ"] = bad.clone();
            }
            let h = parsed_header(header).unwrap();
            assert_eq!(
                token_type(&h).unwrap_err().reason,
                Reason::WrongType,
                "{bad}"
            );
        }
    }

    #[test]
    fn any_crit_is_refused_and_key_urls_are_ignored() {
        let h = parsed_header(json!({"alg": "EdDSA", "typ": "at+jwt", "crit": ["exp"], "exp": 1}))
            .unwrap();
        assert_eq!(critical(&h).unwrap_err().reason, Reason::UnknownCritical);
        let h = parsed_header(json!({
            "alg": "EdDSA", "typ": "at+jwt", "kid": "k",
            "jku": "https://evil.example/jwks", "x5u": "https://evil.example/cert",
            "jwk": {"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}, "x5c": ["AAAA"]
        }))
        .unwrap();
        assert!(critical(&h).is_ok());
        assert_eq!(kid(&h).unwrap(), "k");
    }

    #[test]
    fn nested_tokens_are_malformed() {
        let h = parsed_header(json!({"alg": "EdDSA", "typ": "at+jwt", "cty": "JWT"})).unwrap();
        assert_eq!(content_type(&h).unwrap_err().reason, Reason::Malformed);
    }

    #[test]
    fn a_missing_kid_is_an_unknown_key() {
        let h = parsed_header(json!({"alg": "EdDSA", "typ": "at+jwt"})).unwrap();
        assert_eq!(kid(&h).unwrap_err().reason, Reason::UnknownKey);
    }

    #[test]
    fn required_claims_are_present_and_typed() {
        let claims = super::claims(&valid_claims(), "k").unwrap();
        assert_eq!(claims.sub, "alice");
        assert_eq!(*claims.aud, ["payments"]);
        assert_eq!(claims.scope(), "payments:create payments:read");
        assert_eq!(claims.sid.as_deref(), Some("f-1"));
        for name in ["iss", "exp", "aud", "sub", "client_id", "iat", "jti"] {
            let mut raw = valid_claims();
            raw.remove(name);
            let denial = super::claims(&raw, "k").unwrap_err();
            assert_eq!(denial.reason, Reason::MissingClaim, "{name}");
            assert!(denial.detail.contains(name));
            let mut raw = valid_claims();
            raw.insert(name.into(), json!({"nested": true}));
            assert_eq!(
                super::claims(&raw, "k").unwrap_err().reason,
                Reason::MissingClaim,
                "{name}"
            );
        }
        let mut raw = valid_claims();
        raw.insert("exp".into(), json!("1300"));
        assert_eq!(
            super::claims(&raw, "k").unwrap_err().reason,
            Reason::MissingClaim
        );
        let mut raw = valid_claims();
        raw.insert("scope".into(), json!(["a"]));
        assert_eq!(
            super::claims(&raw, "k").unwrap_err().reason,
            Reason::MissingClaim
        );
        let mut raw = valid_claims();
        raw.insert("exp".into(), json!(1300.7));
        assert_eq!(super::claims(&raw, "k").unwrap().exp, 1300);
    }

    #[test]
    fn issuer_is_exact() {
        let claims = super::claims(&valid_claims(), "k").unwrap();
        assert!(issuer(&claims, "https://issuer.example").is_ok());
        for other in [
            "https://issuer.example/",
            "https://ISSUER.example",
            "https://issuer.example.evil",
        ] {
            assert_eq!(
                issuer(&claims, other).unwrap_err().reason,
                Reason::WrongIssuer
            );
        }
    }

    #[test]
    fn times_allow_the_skew_and_no_more() {
        let claims = super::claims(&valid_claims(), "k").unwrap();
        assert!(time(&claims, 1000, 5).is_ok());
        assert!(time(&claims, 1304, 5).is_ok());
        assert_eq!(time(&claims, 1305, 5).unwrap_err().reason, Reason::Expired);
        assert!(time(&claims, 995, 5).is_ok());
        assert_eq!(
            time(&claims, 994, 5).unwrap_err().reason,
            Reason::NotYetValid
        );
        let mut raw = valid_claims();
        raw.insert("nbf".into(), json!(1100));
        let claims = super::claims(&raw, "k").unwrap();
        assert_eq!(
            time(&claims, 1094, 5).unwrap_err().reason,
            Reason::NotYetValid
        );
        assert!(time(&claims, 1095, 5).is_ok());
    }

    #[test]
    fn audience_is_exactly_the_caller() {
        let mut raw = valid_claims();
        let one = super::claims(&raw, "k").unwrap();
        assert!(audience(&one, "payments").is_ok());
        assert_eq!(
            audience(&one, "auditor").unwrap_err().reason,
            Reason::WrongAudience
        );
        raw.insert("aud".into(), json!(["payments"]));
        assert!(audience(&super::claims(&raw, "k").unwrap(), "payments").is_ok());
        raw.insert("aud".into(), json!(["payments", "auditor"]));
        let two = super::claims(&raw, "k").unwrap();
        assert_eq!(
            audience(&two, "payments").unwrap_err().reason,
            Reason::WrongAudience
        );
        raw.insert("aud".into(), json!([]));
        let none = super::claims(&raw, "k").unwrap();
        assert_eq!(
            audience(&none, "payments").unwrap_err().reason,
            Reason::WrongAudience
        );
    }

    #[test]
    fn scope_comes_from_the_policy() {
        let policy = Policy::from_toml("sample", trias_policy::SAMPLE).unwrap();
        let claims = super::claims(&valid_claims(), "k").unwrap();
        assert_eq!(
            scope(&policy, &claims, "payments", "payment.create").unwrap(),
            "payments:create"
        );
        assert_eq!(
            scope(&policy, &claims, "payments", "payment.approve")
                .unwrap_err()
                .reason,
            Reason::InsufficientScope
        );
        assert_eq!(
            scope(&policy, &claims, "payments", "payment.launder")
                .unwrap_err()
                .reason,
            Reason::UnknownAction
        );
        assert_eq!(
            scope(&policy, &claims, "nowhere", "payment.create")
                .unwrap_err()
                .reason,
            Reason::UnknownAction
        );
    }

    // Tokens signed with the Ed25519 key of RFC 8037 appendix A.1 (kid `k`) and the P-256 key
    // of RFC 7515 appendix A.3 (kid `ec`), whose public halves are below; the validator holds
    // no signing key, so they are written out here. Their claims are `valid_claims()` unless
    // the test says otherwise.
    const RFC8037_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
    const RFC7515_X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
    const RFC7515_Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";
    const SIGNED: &str = "eyJhbGciOiJFZERTQSIsInR5cCI6ImF0K2p3dCIsImtpZCI6ImsifQ.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlIiwic3ViIjoiYWxpY2UiLCJhdWQiOiJwYXltZW50cyIsImNsaWVudF9pZCI6IndlYiIsInNjb3BlIjoicGF5bWVudHM6Y3JlYXRlIHBheW1lbnRzOnJlYWQiLCJpYXQiOjEwMDAsImV4cCI6MTMwMCwianRpIjoidC0xIiwic2lkIjoiZi0xIn0.kbGzMpif1dKNpcRuSmvuSCNU25b5_jrnb3qx8xMpYphZibrgvqms6f2loptj1vHCdi2zvPkgoQt-CyeHG267BA";
    const SIGNED_ES256: &str = "eyJhbGciOiJFUzI1NiIsInR5cCI6ImF0K2p3dCIsImtpZCI6ImVjIn0.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlIiwic3ViIjoiYWxpY2UiLCJhdWQiOiJwYXltZW50cyIsImNsaWVudF9pZCI6IndlYiIsInNjb3BlIjoicGF5bWVudHM6Y3JlYXRlIHBheW1lbnRzOnJlYWQiLCJpYXQiOjEwMDAsImV4cCI6MTMwMCwianRpIjoidC0xIiwic2lkIjoiZi0xIn0.GO6j2kaF-vCSCHPRCh06i7jBenfE45KrKd8OPSrXs0D9HN0LvXv0ZFTKZZ7nMJJy1RtnWpN7M-kQt2Q6aQA2mw";
    /// Header `{"alg":"EdDSA","jwk":false,"kid":"k","typ":"at+jwt"}`: the fuzzer's first find.
    const SIGNED_WITH_ODD_JWK: &str = "eyJhbGciOiJFZERTQSIsImp3ayI6ZmFsc2UsImtpZCI6ImsiLCJ0eXAiOiJhdCtqd3QifQ.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlIiwic3ViIjoiYWxpY2UiLCJhdWQiOiJwYXltZW50cyIsImNsaWVudF9pZCI6IndlYiIsInNjb3BlIjoicGF5bWVudHM6Y3JlYXRlIHBheW1lbnRzOnJlYWQiLCJpYXQiOjEwMDAsImV4cCI6MTMwMCwianRpIjoidC0xIiwic2lkIjoiZi0xIn0.sXbHtfy-hn2fUXZ6Skof_5K8a3HltVpJSUj25PQtaY00q9z4LQUpKkJhagLWOV61vwru1vSoOtM5ZD7s8n8XAQ";
    /// `exp` is -1.
    const SIGNED_NEGATIVE_EXP: &str = "eyJhbGciOiJFZERTQSIsInR5cCI6ImF0K2p3dCIsImtpZCI6ImsifQ.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlIiwic3ViIjoiYWxpY2UiLCJhdWQiOiJwYXltZW50cyIsImNsaWVudF9pZCI6IndlYiIsInNjb3BlIjoicGF5bWVudHM6Y3JlYXRlIHBheW1lbnRzOnJlYWQiLCJpYXQiOjEwMDAsImV4cCI6LTEsImp0aSI6InQtMSIsInNpZCI6ImYtMSJ9.qzyw4TxcBmxg71DuwuIjbbVgUPs8TEw085xvCt7B-8u_GXBJtcZHhI5Lxr2TF9wE_KF06utwXJ5QKlWw9jHTCw";

    /// The RFC key a token's kid names.
    fn rfc_key(kid: &str) -> PublicKey {
        let (kty, crv, alg, x, y) = match kid {
            "k" => ("OKP", "Ed25519", "EdDSA", RFC8037_X, ""),
            _ => ("EC", "P-256", "ES256", RFC7515_X, RFC7515_Y),
        };
        PublicKey::from_jwk(&trias_proto::v1::Jwk {
            kid: kid.into(),
            kty: kty.into(),
            crv: crv.into(),
            alg: alg.into(),
            r#use: "sig".into(),
            x: x.into(),
            y: y.into(),
        })
        .unwrap()
    }

    /// The token stage as the validator runs it, with the two RFC keys as the only keys.
    fn token_stage(token: &str) -> Outcome<Claims> {
        let parts = split(token)?;
        let header = header(&parts)?;
        let algorithm = algorithm(&header)?;
        token_type(&header)?;
        critical(&header)?;
        content_type(&header)?;
        let kid = kid(&header)?;
        let key = rfc_key(kid);
        key_algorithm(algorithm, &key)?;
        let raw = signature(&parts, &key)?;
        claims(&raw, kid)
    }

    #[test]
    fn a_signed_token_verifies_and_a_changed_one_does_not() {
        let claims = token_stage(SIGNED).unwrap();
        assert_eq!(claims, super::claims(&valid_claims(), "k").unwrap());
        let (input, sig) = SIGNED.rsplit_once('.').unwrap();
        let mut bytes = BASE64URL_NOPAD.decode(sig.as_bytes()).unwrap();
        bytes[0] ^= 1;
        let forged = format!("{input}.{}", BASE64URL_NOPAD.encode(&bytes));
        assert_eq!(
            token_stage(&forged).unwrap_err().reason,
            Reason::BadSignature
        );
        let other_payload = format!(
            "{}.{}.{sig}",
            input.split_once('.').unwrap().0,
            b64(&json!({"sub": "mallory"}))
        );
        assert_eq!(
            token_stage(&other_payload).unwrap_err().reason,
            Reason::BadSignature
        );
        assert_eq!(
            token_stage(&format!("{input}.")).unwrap_err().reason,
            Reason::BadSignature
        );
    }

    #[test]
    fn an_es256_token_verifies_with_its_p256_key_only() {
        let claims = token_stage(SIGNED_ES256).unwrap();
        assert_eq!(&*claims.kid, "ec");
        let parts = split(SIGNED_ES256).unwrap();
        assert_eq!(
            signature(&parts, &rfc_key("k")).unwrap_err().reason,
            Reason::BadSignature
        );
        let (input, sig) = SIGNED_ES256.rsplit_once('.').unwrap();
        let mut bytes = BASE64URL_NOPAD.decode(sig.as_bytes()).unwrap();
        bytes[40] ^= 1;
        let forged = format!("{input}.{}", BASE64URL_NOPAD.encode(&bytes));
        assert_eq!(
            token_stage(&forged).unwrap_err().reason,
            Reason::BadSignature
        );
    }

    // Found by fuzzing (fuzz/fuzz_targets/token.rs, docs/hardening.md): jsonwebtoken's
    // `decode` parsed the header a second time into its own struct, so a member no check here
    // reads, in a shape jsonwebtoken does not expect, refused a validly signed token as
    // "the claims are not a JSON object".
    #[test]
    fn header_members_no_check_reads_do_not_refuse_a_signed_token() {
        let claims = token_stage(SIGNED_WITH_ODD_JWK).unwrap();
        assert_eq!(claims.sub, "alice");
    }

    // The same cause on the claims: jsonwebtoken's own required-claims check reads `exp` as
    // an unsigned number, so a negative `exp` was reported as a missing claim instead of
    // reaching the time check, which says what is wrong with it.
    #[test]
    fn the_claim_checks_decide_on_the_claims_of_a_signed_token() {
        let claims = token_stage(SIGNED_NEGATIVE_EXP).unwrap();
        assert_eq!(claims.exp, -1);
        assert_eq!(time(&claims, 1000, 5).unwrap_err().reason, Reason::Expired);
    }

    #[test]
    fn reason_names_are_the_audit_logs() {
        assert_eq!(reason_name(Reason::DutyConflict), "duty_conflict");
        assert_eq!(reason_name(Reason::Ok), "ok");
    }
}
