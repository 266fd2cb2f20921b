//! Verifying access tokens as a standard resource server would: the key named by `kid` from
//! the published JWKS, the algorithm that key is bound to, `typ`, issuer and audience.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

/// Verifies `token` against a JWKS document; returns the claims or why it was refused.
pub fn verify(token: &str, jwks: &Value, issuer: &str, audience: &str) -> Result<Value, String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
    if header.typ.as_deref() != Some("at+jwt") {
        return Err("typ is not at+jwt".into());
    }
    let kid = header.kid.ok_or("no kid")?;
    let jwk = jwks["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|k| k["kid"] == kid.as_str())
        .ok_or("kid not in the JWKS")?;
    let text = |name: &str| jwk[name].as_str().unwrap_or("").to_owned();
    let (key, algorithm) = match (text("kty").as_str(), text("crv").as_str()) {
        ("OKP", "Ed25519") => (
            DecodingKey::from_ed_components(&text("x")),
            Algorithm::EdDSA,
        ),
        ("EC", "P-256") => (
            DecodingKey::from_ec_components(&text("x"), &text("y")),
            Algorithm::ES256,
        ),
        other => return Err(format!("unexpected key type {other:?}")),
    };
    let key = key.map_err(|e| e.to_string())?;
    // RFC 8725 §3.1: the algorithm is the one the key is bound to, never the header's choice.
    if header.alg != algorithm || text("alg") != format!("{algorithm:?}") {
        return Err("algorithm does not match the key".into());
    }
    let mut validation = Validation::new(algorithm);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .map(|data| data.claims)
        .map_err(|e| e.to_string())
}
