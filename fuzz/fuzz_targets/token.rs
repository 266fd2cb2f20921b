//! Fuzzes the validator's token checks (`trias_validator::check`) in the order the validator
//! runs them, ending in the signature check against one fixed Ed25519 key.
//!
//! Two kinds of input: any text as a token, and tokens signed by the fixed key whose header
//! and claims the fuzzer chooses (from a valid token outwards), optionally tampered with after
//! signing. Arbitrary text almost never carries a valid signature, so without the second kind
//! the claim checks after the signature would hardly run.
//!
//! Invariants: nothing panics; a token the pipeline accepts verifies under the fixed key when
//! checked independently with ring; a token signed by the key and not tampered with is never
//! refused for its signature, and is accepted exactly when every other check (run on its own,
//! without the signature) accepts it; a tampered token is never accepted.

#![no_main]

use std::sync::LazyLock;

use arbitrary::Arbitrary;
use data_encoding::BASE64URL_NOPAD;
use libfuzzer_sys::fuzz_target;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use serde_json::{Map, Value, json};
use trias_policy::Policy;
use trias_proto::v1::{Jwk, Reason};
use trias_validator::check::{self, Claims, Denial, Outcome};
use trias_validator::keys::PublicKey;

const KID: &str = "k";
const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "payments";
/// The validator's default `max_token_bytes`.
const MAX_TOKEN_BYTES: usize = 8192;

/// The fixed key, RFC 8037 appendix A.1's, which the validator's unit tests also use: the
/// signing half stays in this harness, the validator sees the JWK only.
static PAIR: LazyLock<Ed25519KeyPair> = LazyLock::new(|| {
    let seed = BASE64URL_NOPAD
        .decode(b"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")
        .expect("base64url");
    Ed25519KeyPair::from_seed_unchecked(&seed).expect("a 32-byte seed is a valid key")
});

static KEY: LazyLock<PublicKey> = LazyLock::new(|| {
    PublicKey::from_jwk(&Jwk {
        kid: KID.into(),
        kty: "OKP".into(),
        crv: "Ed25519".into(),
        alg: "EdDSA".into(),
        r#use: "sig".into(),
        x: BASE64URL_NOPAD.encode(PAIR.public_key().as_ref()),
        y: String::new(),
    })
    .expect("the fixed JWK is accepted")
});

static POLICY: LazyLock<Policy> = LazyLock::new(|| {
    Policy::from_toml("sample", trias_policy::SAMPLE).expect("the sample policy parses")
});

#[derive(Debug, Arbitrary)]
enum Input<'a> {
    /// Any text as a token.
    Raw { token: &'a str, now: i64, skew: u8 },
    /// A token signed by the fixed key.
    Signed {
        header: Part<'a>,
        payload: Part<'a>,
        tamper: Option<Tamper>,
        now: i64,
        skew: u8,
    },
}

/// A header or payload: raw bytes, or a valid one with some members changed.
#[derive(Debug, Arbitrary)]
enum Part<'a> {
    Raw(&'a [u8]),
    Edited(Vec<(Name<'a>, Member<'a>)>),
}

#[derive(Debug, Arbitrary)]
enum Name<'a> {
    Alg,
    Typ,
    Kid,
    Cty,
    Crit,
    Jwk,
    Iss,
    Sub,
    Aud,
    ClientId,
    Scope,
    Iat,
    Exp,
    Nbf,
    Jti,
    Sid,
    Acr,
    Other(&'a str),
}

impl Name<'_> {
    fn as_str(&self) -> &str {
        match self {
            Name::Alg => "alg",
            Name::Typ => "typ",
            Name::Kid => "kid",
            Name::Cty => "cty",
            Name::Crit => "crit",
            Name::Jwk => "jwk",
            Name::Iss => "iss",
            Name::Sub => "sub",
            Name::Aud => "aud",
            Name::ClientId => "client_id",
            Name::Scope => "scope",
            Name::Iat => "iat",
            Name::Exp => "exp",
            Name::Nbf => "nbf",
            Name::Jti => "jti",
            Name::Sid => "sid",
            Name::Acr => "acr",
            Name::Other(name) => name,
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Member<'a> {
    Absent,
    Text(&'a str),
    Int(i64),
    Unsigned(u64),
    Float(f64),
    Texts(Vec<&'a str>),
    Bool(bool),
    Null,
    Object,
}

impl Member<'_> {
    fn value(&self) -> Option<Value> {
        Some(match self {
            Member::Absent => return None,
            Member::Text(text) => json!(text),
            Member::Int(n) => json!(n),
            Member::Unsigned(n) => json!(n),
            Member::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Member::Texts(texts) => json!(texts),
            Member::Bool(b) => json!(b),
            Member::Null => Value::Null,
            Member::Object => json!({ "nested": true }),
        })
    }
}

/// A change made to a signed token, after which it must not be accepted.
#[derive(Debug, Arbitrary)]
enum Tamper {
    /// Flips one of the low seven bits of a byte, so the token stays ASCII.
    FlipBit {
        at: u16,
        bit: u8,
    },
    DropSignature,
    SwapHeaderAndPayload,
}

fn encode(part: &Part<'_>, valid: Value) -> String {
    match part {
        Part::Raw(bytes) => BASE64URL_NOPAD.encode(bytes),
        Part::Edited(edits) => {
            let Value::Object(mut object) = valid else {
                unreachable!("the valid parts are objects")
            };
            for (name, member) in edits {
                match member.value() {
                    Some(value) => object.insert(name.as_str().to_owned(), value),
                    None => object.remove(name.as_str()),
                };
            }
            BASE64URL_NOPAD.encode(Value::Object(object).to_string().as_bytes())
        }
    }
}

fn sign(header: &Part<'_>, payload: &Part<'_>) -> String {
    let header = encode(
        header,
        json!({ "alg": "EdDSA", "typ": "at+jwt", "kid": KID }),
    );
    let payload = encode(
        payload,
        json!({
            "iss": ISSUER, "sub": "alice", "aud": AUDIENCE, "client_id": "web",
            "scope": "payments:create payments:read", "iat": 1000, "exp": 1300, "jti": "t-1"
        }),
    );
    let input = format!("{header}.{payload}");
    let signature = PAIR.sign(input.as_bytes());
    format!("{input}.{}", BASE64URL_NOPAD.encode(signature.as_ref()))
}

fn tamper(token: &str, how: &Tamper) -> Option<String> {
    match how {
        Tamper::FlipBit { at, bit } => {
            let mut bytes = token.as_bytes().to_vec();
            let at = usize::from(*at) % bytes.len();
            bytes[at] ^= 1 << (bit % 7);
            Some(String::from_utf8(bytes).expect("ASCII stays ASCII"))
        }
        Tamper::DropSignature => Some(format!("{}.", token.rsplit_once('.')?.0)),
        Tamper::SwapHeaderAndPayload => {
            let mut parts = token.split('.');
            let (header, payload, signature) = (parts.next()?, parts.next()?, parts.next()?);
            (header != payload).then(|| format!("{payload}.{header}.{signature}"))
        }
    }
}

/// The validator's token stage (`Validator::verify`: `check::size`, `check::unverified`, the
/// key lookup, `check::verified`), with the key lookup replaced by the fixed key.
fn token_stage(token: &str) -> Outcome<Claims> {
    check::size(token, MAX_TOKEN_BYTES)?;
    let unverified = check::unverified(token)?;
    if *unverified.kid != *KEY.kid {
        return Err(Denial::new(Reason::UnknownKey, "unknown key"));
    }
    check::verified(&unverified, &KEY, ISSUER)
}

/// The request stage's checks that depend on the claims alone.
fn request_stage(claims: &Claims, now: i64, skew: u8) {
    let _ = check::time(claims, now, i64::from(skew));
    let _ = check::declared_audience(AUDIENCE, Some(AUDIENCE));
    let _ = check::audience(claims, AUDIENCE);
    for action in ["payment.create", "payment.approve", "nothing"] {
        let _ = check::scope(&POLICY, claims, AUDIENCE, action);
    }
    let _ = claims.scope();
}

/// Checks the signature of an accepted token without jsonwebtoken: ring over the signing input.
fn verifies_independently(token: &str) -> bool {
    let Some((input, signature)) = token.rsplit_once('.') else {
        return false;
    };
    let Ok(signature) = BASE64URL_NOPAD.decode(signature.as_bytes()) else {
        return false;
    };
    UnparsedPublicKey::new(&ED25519, PAIR.public_key().as_ref())
        .verify(input.as_bytes(), &signature)
        .is_ok()
}

/// Runs both stages and checks what holds for every token.
fn run(token: &str, now: i64, skew: u8) -> Outcome<Claims> {
    let outcome = token_stage(token);
    if let Ok(claims) = &outcome {
        assert!(
            verifies_independently(token),
            "accepted a token that does not verify: {token}"
        );
        assert_eq!(&*claims.kid, KID);
        request_stage(claims, now, skew);
    }
    outcome
}

/// The claims of the payload of any token shaped like a JWS, by the validator's own claim
/// checks and without the signature, so that they run on far more inputs than those that
/// pass the signature.
fn unsigned_claims(token: &str) -> Option<Claims> {
    let parts = check::split(token).ok()?;
    let bytes = BASE64URL_NOPAD.decode(parts.payload.as_bytes()).ok()?;
    let object = serde_json::from_slice::<check::UniqueObject>(&bytes).ok()?;
    let raw: Map<String, Value> = object.0;
    check::claims(&raw, KID).ok()
}

/// Whether every check of the token stage but the signature passes.
fn passes_all_but_the_signature(token: &str) -> bool {
    let header = || -> Outcome<()> {
        check::size(token, MAX_TOKEN_BYTES)?;
        let unverified = check::unverified(token)?;
        if *unverified.kid != *KEY.kid {
            return Err(Denial::new(Reason::UnknownKey, "unknown key"));
        }
        check::key_algorithm(unverified.algorithm, &KEY)
    };
    header().is_ok()
        && unsigned_claims(token).is_some_and(|claims| check::issuer(&claims, ISSUER).is_ok())
}

fuzz_target!(|input: Input<'_>| {
    match input {
        Input::Raw { token, now, skew } => {
            let _ = run(token, now, skew);
            if let Some(claims) = unsigned_claims(token) {
                let _ = check::issuer(&claims, ISSUER);
                request_stage(&claims, now, skew);
            }
        }
        Input::Signed {
            header,
            payload,
            tamper: how,
            now,
            skew,
        } => {
            let token = sign(&header, &payload);
            match how.as_ref().and_then(|how| tamper(&token, how)) {
                Some(tampered) if tampered != token => {
                    if let Ok(claims) = run(&tampered, now, skew) {
                        panic!("accepted a tampered token {tampered}: {claims:?}");
                    }
                }
                _ => {
                    // The validator's own checks decide: a token the key signed that passes
                    // every other check passes the signature check too, and is never refused
                    // for its signature.
                    let expected = passes_all_but_the_signature(&token);
                    match run(&token, now, skew) {
                        Ok(_) => assert!(expected, "accepted a token its checks refuse: {token}"),
                        Err(denial) => {
                            assert_ne!(
                                denial.reason,
                                Reason::BadSignature,
                                "refused a token signed by the key: {token}: {denial:?}"
                            );
                            assert!(
                                !expected,
                                "refused a signed token every check accepts: {token}: {denial:?}"
                            );
                        }
                    }
                }
            }
        }
    }
});
