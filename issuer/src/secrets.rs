//! Random values, hashes and the checks of secrets: client secrets, refresh tokens,
//! authorization codes, PKCE, passwords (argon2id) and TOTP (RFC 6238).

use std::time::SystemTime;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use data_encoding::{BASE32_NOPAD, BASE64URL_NOPAD, HEXLOWER};
use ring::digest::{SHA256, digest};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::Error;

/// `n` random bytes from the operating system's CSPRNG.
pub fn random_bytes(rng: &SystemRandom, n: usize) -> Result<Vec<u8>, Error> {
    let mut buf = vec![0u8; n];
    rng.fill(&mut buf)
        .map_err(|_| Error::Internal("system random number generator failed".into()))?;
    Ok(buf)
}

/// A 256-bit bearer value (refresh token, authorization code, client secret), base64url.
pub fn random_token(rng: &SystemRandom) -> Result<String, Error> {
    Ok(BASE64URL_NOPAD.encode(&random_bytes(rng, 32)?))
}

/// A 128-bit identifier (user id, grant id, client id), lowercase hex.
pub fn random_id(rng: &SystemRandom) -> Result<String, Error> {
    Ok(HEXLOWER.encode(&random_bytes(rng, 16)?))
}

/// A 128-bit identifier that sorts by creation time (token id, refresh family), lowercase
/// hex: see `trias_runtime::id`. The auditor, the validator's ledger and the issuer's
/// families index these ids, and new ones land at the end of each index.
pub fn time_ordered_id(rng: &SystemRandom, now: SystemTime) -> Result<String, Error> {
    trias_runtime::id::time_ordered(rng, now).map_err(|e| Error::Internal(e.to_string()))
}

/// SHA-256 of a high-entropy bearer value: what the database keeps instead of the value.
///
/// A salt or a slow hash adds nothing for 256-bit random values, and comparing these hashes
/// with `==` leaks nothing useful: an attacker cannot steer which hash bytes match.
pub fn hash_secret(value: &str) -> Vec<u8> {
    digest(&SHA256, value.as_bytes()).as_ref().to_vec()
}

/// RFC 7636 §4.6 with S256: `BASE64URL(SHA256(verifier)) == challenge`.
pub fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    BASE64URL_NOPAD.encode(digest(&SHA256, verifier.as_bytes()).as_ref()) == challenge
}

/// RFC 7636 §4.1: 43 to 128 characters of `[A-Za-z0-9-._~]`.
pub fn is_valid_pkce_value(value: &str) -> bool {
    (43..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// An argon2id hash (PHC string) of a password, with a random salt.
pub fn hash_password(rng: &SystemRandom, password: &str) -> Result<String, Error> {
    let salt = SaltString::encode_b64(&random_bytes(rng, 16)?)
        .map_err(|e| Error::Internal(format!("password salt: {e}")))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| Error::Internal(format!("password hash: {e}")))
}

/// A hash that verifies no password, used when the username is unknown so that a failed
/// login takes the same time whether or not the user exists.
pub const DUMMY_PASSWORD_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$yD6aB3Xy5hUu3r0Yw3h8c7rJ2bqCk4lC0hGJ0r5C7pE";

/// Whether `password` matches the stored argon2 PHC string; a malformed hash matches nothing.
pub fn verify_password(stored: &str, password: &str) -> bool {
    match PasswordHash::new(stored) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// TOTP parameters (RFC 6238 defaults, which authenticator apps assume): SHA-1, 30 s, 6 digits.
const TOTP_STEP_SECONDS: u64 = 30;
const TOTP_DIGITS: u32 = 6;

/// A new 160-bit TOTP secret.
pub fn new_totp_secret(rng: &SystemRandom) -> Result<Vec<u8>, Error> {
    random_bytes(rng, 20)
}

/// The base32 form of a TOTP secret that authenticator apps take.
pub fn totp_secret_base32(secret: &[u8]) -> String {
    BASE32_NOPAD.encode(secret)
}

/// The `otpauth://` URI for enrolling the secret in an authenticator app.
pub fn totp_uri(issuer: &str, username: &str, secret: &[u8]) -> String {
    let label = |s: &str| {
        s.replace(
            |c: char| !c.is_ascii_alphanumeric() && c != '.' && c != '-',
            "_",
        )
    };
    format!(
        "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm=SHA1&digits=6&period=30",
        label(issuer),
        label(username),
        totp_secret_base32(secret),
        label(issuer)
    )
}

/// The HOTP value (RFC 4226) for a counter.
fn hotp(secret: &[u8], counter: u64) -> u32 {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let tag = hmac::sign(&key, &counter.to_be_bytes());
    let mac = tag.as_ref();
    let offset = usize::from(mac[mac.len() - 1] & 0x0f);
    let code = u32::from_be_bytes([
        mac[offset],
        mac[offset + 1],
        mac[offset + 2],
        mac[offset + 3],
    ]) & 0x7fff_ffff;
    code % 10u32.pow(TOTP_DIGITS)
}

/// The TOTP code at a unix time, zero-padded.
pub fn totp_at(secret: &[u8], unix_seconds: u64) -> String {
    format!("{:06}", hotp(secret, unix_seconds / TOTP_STEP_SECONDS))
}

/// Whether `code` is the TOTP for `unix_seconds`, allowing one step of clock drift either way.
pub fn verify_totp(secret: &[u8], code: &str, unix_seconds: u64) -> bool {
    if code.len() != TOTP_DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let step = unix_seconds / TOTP_STEP_SECONDS;
    [step.saturating_sub(1), step, step + 1]
        .into_iter()
        .any(|counter| format!("{:06}", hotp(secret, counter)) == code)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    #[test]
    fn totp_matches_rfc_6238_sha1_vectors() {
        // RFC 6238 Appendix B, SHA-1, 8 digits; the 6-digit value is the last six of them.
        let secret = b"12345678901234567890";
        for (time, eight) in [
            (59, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
        ] {
            assert_eq!(totp_at(secret, time), eight[2..], "time {time}");
        }
    }

    #[test]
    fn totp_accepts_one_step_of_drift_and_no_more() {
        let secret = b"12345678901234567890";
        let code = totp_at(secret, 1_000_000);
        assert!(verify_totp(secret, &code, 1_000_000));
        assert!(verify_totp(secret, &code, 1_000_000 + 30));
        assert!(!verify_totp(secret, &code, 1_000_000 + 90));
        assert!(!verify_totp(secret, "12345", 1_000_000));
        assert!(!verify_totp(secret, "abcdef", 1_000_000));
    }

    #[test]
    fn pkce_s256_matches_rfc_7636_appendix_b() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert!(is_valid_pkce_value(verifier));
        assert!(pkce_matches(
            verifier,
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        ));
        assert!(!pkce_matches(
            "x",
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        ));
        assert!(!is_valid_pkce_value("short"));
        assert!(!is_valid_pkce_value(&"a".repeat(129)));
        assert!(!is_valid_pkce_value(&format!("{}+", "a".repeat(50))));
    }

    #[test]
    fn passwords_verify_only_with_the_right_password() {
        let rng = SystemRandom::new();
        let hash = hash_password(&rng, "correct horse battery").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password(&hash, "correct horse battery"));
        assert!(!verify_password(&hash, "correct horse batterY"));
        assert!(!verify_password(DUMMY_PASSWORD_HASH, ""));
        assert!(!verify_password("not a hash", "x"));
    }
}
