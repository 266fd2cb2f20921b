//! The token attack corpus (`tests/corpus/tokens/`, written by `tests/corpus/generate.py`):
//! every case is built against a running issuer — its keys, its clock, its names — and must be
//! decided as the case file says, by `Check` over gRPC and by RFC 7662 introspection alike.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::path::{Path, PathBuf};

use data_encoding::{BASE64URL_NOPAD, HEXLOWER};
use jsonwebtoken::{Algorithm, EncodingKey};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{Value, json};
use trias_issuer::issuer::Actor;
use trias_issuer::keys::KeyAlgorithm;
use trias_tests::validator::{PAYMENTS_BACKEND, ValidatorOptions, start_validator};
use trias_tests::{Backend, IssuerOptions, jwt_parts, start_issuer};
use trias_validator::check::reason_name;

/// The order of the P-256 group: an ECDSA `r` or `s` must lie strictly between 0 and this.
const P256_ORDER: &str = "ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551";

/// What the templates of a case are filled with, and the keys that sign it.
struct World {
    strings: Vec<(&'static str, String)>,
    now: i64,
    eddsa: EncodingKey,
    es256: EncodingKey,
    attacker: EncodingKey,
    public_x: String,
    genuine: String,
}

impl World {
    /// Fills the `$name` templates of a string; `$now`, `$now+N` and `$now-N` become numbers.
    fn value(&self, value: &Value) -> Value {
        match value {
            Value::String(s) => match self.time(s) {
                Some(t) => json!(t),
                None => Value::String(self.text(s)),
            },
            Value::Array(items) => Value::Array(items.iter().map(|v| self.value(v)).collect()),
            Value::Object(members) => Value::Object(
                members
                    .iter()
                    .map(|(k, v)| (k.clone(), self.value(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    fn time(&self, s: &str) -> Option<i64> {
        let rest = s.strip_prefix("$now")?;
        if rest.is_empty() {
            return Some(self.now);
        }
        let offset: i64 = rest.strip_prefix('+').unwrap_or(rest).parse().ok()?;
        Some(self.now + offset)
    }

    /// Fills the templates of raw text; a quoted `"$now…"` becomes the bare number.
    fn text(&self, s: &str) -> String {
        let mut out = s.to_owned();
        while let Some(start) = out.find("\"$now") {
            let end = start + 1 + out[start + 1..].find('"').unwrap();
            let number = self.time(&out[start + 1..end]).unwrap();
            out.replace_range(start..=end, &number.to_string());
        }
        for (name, value) in &self.strings {
            out = out.replace(name, value);
        }
        out
    }

    /// The signature of `message` by the case's `key`, base64url.
    fn sign(&self, key: &str, header: &Value, message: &[u8]) -> String {
        let with = |key: &EncodingKey, alg| jsonwebtoken::crypto::sign(message, key, alg).unwrap();
        match key {
            "issuer" => with(&self.eddsa, Algorithm::EdDSA),
            "issuer_es256" => with(&self.es256, Algorithm::ES256),
            "attacker" => with(&self.attacker, Algorithm::EdDSA),
            "hmac_x" | "hmac_raw" => {
                let secret = if key == "hmac_x" {
                    self.public_x.as_bytes().to_vec()
                } else {
                    BASE64URL_NOPAD.decode(self.public_x.as_bytes()).unwrap()
                };
                let alg = header["alg"].as_str().unwrap().parse().unwrap();
                with(&EncodingKey::from_secret(&secret), alg)
            }
            "none" => String::new(),
            "junk" => BASE64URL_NOPAD.encode(&[7; 64]),
            other => panic!("unknown key {other}"),
        }
    }

    /// The token a case describes.
    fn token(&self, case: &Value) -> String {
        if let Some(text) = case["token_text"].as_str() {
            return self.text(text);
        }
        let part = |name: &str| -> String {
            match case.get(format!("{name}_text")) {
                Some(text) => self.text(text.as_str().unwrap()),
                None => self.value(&case[name]).to_string(),
            }
        };
        let (header, claims) = (part("header"), part("claims"));
        let header_value: Value = serde_json::from_str(&header).unwrap_or(Value::Null);
        let message = format!(
            "{}.{}",
            BASE64URL_NOPAD.encode(header.as_bytes()),
            BASE64URL_NOPAD.encode(claims.as_bytes())
        );
        let signature = self.sign(
            case["key"].as_str().unwrap(),
            &header_value,
            message.as_bytes(),
        );
        let mut token = format!("{message}.{signature}");
        for step in case["then"].as_array().into_iter().flatten() {
            let step = step.as_str().unwrap();
            let changed = self.transform(step, &token);
            assert_ne!(changed, token, "{step} changed nothing");
            token = changed;
        }
        token
    }

    /// A change made to a signed token.
    fn transform(&self, step: &str, token: &str) -> String {
        let parts: Vec<&str> = token.split('.').collect();
        let (h, p, s) = (parts[0], parts[1], parts[2]);
        let mut sig = BASE64URL_NOPAD.decode(s.as_bytes()).unwrap();
        let with_sig = |sig: &[u8]| format!("{h}.{p}.{}", BASE64URL_NOPAD.encode(sig));
        let order = HEXLOWER.decode(P256_ORDER.as_bytes()).unwrap();
        match step {
            "pad_header" => format!("{h}=.{p}.{s}"),
            "trailing_bits" => {
                // The last character carries unused low bits; setting one keeps the bytes
                // a lenient decoder returns and makes the text non-canonical.
                let alphabet = BASE64URL_NOPAD.specification().symbols;
                let last = s.chars().last().unwrap();
                let index = alphabet.find(last).unwrap();
                let odd = alphabet.chars().nth(index | 1).unwrap();
                format!("{h}.{p}.{}{odd}", &s[..s.len() - 1])
            }
            "standard_alphabet" => token.replace('-', "+").replace('_', "/"),
            "whitespace" => format!("{h}.{}\n{}.{s}", &p[..p.len() / 2], &p[p.len() / 2..]),
            "json_flattened" => json!({"protected": h, "payload": p, "signature": s}).to_string(),
            "json_general" => {
                json!({"payload": p, "signatures": [{"protected": h, "signature": s}]}).to_string()
            }
            "drop_signature_part" => format!("{h}.{p}"),
            "extra_part" => format!("{token}.e30"),
            "ecdsa_r_zero" => {
                sig[..32].fill(0);
                with_sig(&sig)
            }
            "ecdsa_s_zero" => {
                sig[32..].fill(0);
                with_sig(&sig)
            }
            "ecdsa_both_zero" => with_sig(&[0; 64]),
            "ecdsa_r_n" => {
                sig[..32].copy_from_slice(&order);
                with_sig(&sig)
            }
            "ecdsa_s_n" => {
                sig[32..].copy_from_slice(&order);
                with_sig(&sig)
            }
            "ecdsa_der" => with_sig(&der(&sig[..32], &sig[32..])),
            "modify_header" => {
                let mut header = jwt_parts(token).0;
                header["x"] = json!(1);
                let h = BASE64URL_NOPAD.encode(header.to_string().as_bytes());
                format!("{h}.{p}.{s}")
            }
            "modify_payload" => {
                let mut claims = jwt_parts(token).1;
                claims["scope"] = json!("payments:read payments:approve");
                let p = BASE64URL_NOPAD.encode(claims.to_string().as_bytes());
                format!("{h}.{p}.{s}")
            }
            "flip_signature" => {
                sig[0] ^= 1;
                with_sig(&sig)
            }
            "truncate_signature" => with_sig(&sig[..sig.len() - 8]),
            "empty_signature" => format!("{h}.{p}."),
            "genuine_signature" => {
                format!("{h}.{p}.{}", self.genuine.rsplit('.').next().unwrap())
            }
            other => panic!("unknown transform {other}"),
        }
    }
}

/// An ECDSA signature as ASN.1 DER, the form JWS does not use (RFC 7518 §3.4).
fn der(r: &[u8], s: &[u8]) -> Vec<u8> {
    let integer = |bytes: &[u8]| {
        let mut v = vec![0x02];
        let pad = bytes[0] & 0x80 != 0;
        v.push(u8::try_from(bytes.len() + usize::from(pad)).unwrap());
        if pad {
            v.push(0);
        }
        v.extend_from_slice(bytes);
        v
    };
    let body = [integer(r), integer(s)].concat();
    let mut out = vec![0x30, u8::try_from(body.len()).unwrap()];
    out.extend(body);
    out
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/tokens")
}

/// Every case file, by name.
fn cases() -> Vec<(String, Value)> {
    let mut cases: Vec<(String, Value)> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            let case: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, case)
        })
        .collect();
    cases.sort_by(|a, b| a.0.cmp(&b.0));
    cases
}

fn attacker_x(key_pkcs8: &[u8]) -> String {
    let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(key_pkcs8).unwrap();
    BASE64URL_NOPAD.encode(pair.public_key().as_ref())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attack_token_is_denied_with_its_reason() {
    let policy = trias_policy::SAMPLE.to_owned();
    let issuer = start_issuer(IssuerOptions {
        policy: policy.clone(),
        ..IssuerOptions::on(Backend::Sqlite)
    })
    .await
    .unwrap();
    // An ES256 key published beside the EdDSA one (it would sign only after the publish
    // delay, which the manual clock never reaches), so both are in the validator's key set.
    issuer
        .issuer
        .rotate_keys(&Actor::Local, Some(KeyAlgorithm::ES256))
        .await
        .unwrap();
    let validator = start_validator(
        &issuer,
        ValidatorOptions {
            policy,
            ..ValidatorOptions::on(Backend::Sqlite)
        },
    )
    .await
    .unwrap();

    let genuine = issuer
        .token_for(&["clerk"], "payments:read", "payments")
        .await;
    let claims = jwt_parts(&genuine).1;
    let records = issuer.issuer.store().keys().await.unwrap();
    let record = |algorithm: &str| records.iter().find(|r| r.algorithm == algorithm).unwrap();
    let (eddsa, es256) = (record("EdDSA"), record("ES256"));
    let attacker_pkcs8 = {
        let rng = ring::rand::SystemRandom::new();
        Ed25519KeyPair::generate_pkcs8(&rng).unwrap()
    };
    let text = |name: &str| claims[name].as_str().unwrap().to_owned();
    let world = World {
        strings: vec![
            ("$kid_es256", es256.kid.clone()),
            ("$attacker_x", attacker_x(attacker_pkcs8.as_ref())),
            ("$genuine_token", genuine.clone()),
            ("$client", text("client_id")),
            ("$scope", "payments:read".into()),
            ("$kid", eddsa.kid.clone()),
            ("$iss", text("iss")),
            ("$ISS", text("iss").to_uppercase()),
            ("$aud", "payments".into()),
            ("$sub", text("sub")),
            ("$jti", "corpus-token".into()),
        ],
        now: issuer.now(),
        eddsa: EncodingKey::from_ed_der(&eddsa.private_pkcs8),
        es256: EncodingKey::from_ec_der(&es256.private_pkcs8),
        attacker: EncodingKey::from_ed_der(attacker_pkcs8.as_ref()),
        public_x: BASE64URL_NOPAD.encode(&eddsa.public_key),
        genuine,
    };

    let cases = cases();
    assert!(cases.len() >= 150, "the corpus has {} cases", cases.len());
    let mut wrong = Vec::new();
    for (name, case) in &cases {
        let expect = case["expect"].as_str().unwrap();
        let token = world.token(case);
        let decision = validator
            .check(&token, "payment.read", "", "payments")
            .await;
        let by_check = if decision.allowed {
            "allow".to_owned()
        } else {
            reason_name(decision.reason())
        };
        let reply = validator.introspect(&token, Some(PAYMENTS_BACKEND)).await;
        let by_introspection = if reply.status == 400 {
            reply.error().to_owned()
        } else if reply.body["active"] == json!(true) {
            "allow".to_owned()
        } else {
            assert_eq!(reply.status, 200, "{name}: {:?}", reply.body);
            assert_eq!(reply.body, json!({"active": false}), "{name}");
            // The reason is not for the caller (RFC 7662 §2.2); the check event records it.
            validator.check_events().await.pop().unwrap().reason
        };
        let introspection_expect = case["expect_introspection"].as_str().unwrap_or(expect);
        if by_check != expect || by_introspection != introspection_expect {
            wrong.push(format!(
                "{name}: expected {expect}, Check said {by_check}, introspection said \
                 {by_introspection}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    validator.stop().await;
    issuer.stop().await;
}
