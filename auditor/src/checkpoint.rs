//! Checkpoints: a C2SP tlog-checkpoint body (`<origin>\n<tree size>\n<base64 root>\n`) inside
//! a C2SP signed-note, signed with Ed25519 by the auditor's own key — never a token-signing
//! key — and the note verifier key (`<name>+<hex key hash>+<base64(0x01 ‖ public key)>`)
//! anyone can check a checkpoint with, without trusting the auditor.
//!
//! The key is generated on first start into a PKCS#8 file created owner-only; a file that
//! others can read is refused at start, since whoever reads it could sign a forked log.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use data_encoding::{BASE64, HEXLOWER};
use ring::digest::{SHA256, digest};
use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};

use crate::merkle::Hash;

/// The signature algorithm byte of an Ed25519 key in signed notes.
const ALG_ED25519: u8 = 0x01;

/// The em dash (U+2014) and space that open every signature line.
const SIGNATURE_PREFIX: &str = "\u{2014} ";

/// The body of a checkpoint: which log, how many entries, and the root hash over them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointBody {
    pub origin: String,
    pub tree_size: u64,
    pub root: Hash,
}

/// A note or key that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("malformed note: {0}")]
    Malformed(String),
    #[error("malformed verifier key: {0}")]
    BadVerifierKey(String),
    #[error("the note has no signature by {0}")]
    NoSignature(String),
    #[error("the signature by {0} does not verify")]
    BadSignature(String),
    #[error("the checkpoint is for origin {found:?}, not {expected:?}")]
    WrongOrigin { expected: String, found: String },
}

impl CheckpointBody {
    /// The checkpoint text, each line ending in a newline.
    pub fn to_text(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.tree_size,
            BASE64.encode(&self.root)
        )
    }

    /// Parses a checkpoint text; extension lines after the root are allowed and ignored.
    pub fn parse(text: &str) -> Result<CheckpointBody, NoteError> {
        let bad = |why: &str| NoteError::Malformed(why.to_owned());
        let body = text
            .strip_suffix('\n')
            .ok_or_else(|| bad("the checkpoint does not end with a newline"))?;
        let mut lines = body.split('\n');
        let origin = lines.next().unwrap_or_default();
        if origin.is_empty() {
            return Err(bad("empty origin line"));
        }
        let size = lines.next().ok_or_else(|| bad("no tree size line"))?;
        if size.is_empty()
            || !size.bytes().all(|b| b.is_ascii_digit())
            || (size.len() > 1 && size.starts_with('0'))
        {
            return Err(bad("the tree size is not a decimal number"));
        }
        let tree_size = size
            .parse()
            .map_err(|_| bad("the tree size is too large"))?;
        let root = lines.next().ok_or_else(|| bad("no root hash line"))?;
        let root: Hash = BASE64
            .decode(root.as_bytes())
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| bad("the root hash is not 32 bytes of base64"))?;
        if lines.any(str::is_empty) {
            return Err(bad("empty extension line"));
        }
        Ok(CheckpointBody {
            origin: origin.to_owned(),
            tree_size,
            root,
        })
    }
}

/// Whether `name` may name a key in a signed note: non-empty, no spaces, no `+`.
pub fn valid_key_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+')
}

/// The 4-byte key id of a signed-note Ed25519 key: the first bytes of
/// SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key).
fn key_hash(name: &str, public: &[u8]) -> [u8; 4] {
    let mut input = Vec::with_capacity(name.len() + 2 + public.len());
    input.extend_from_slice(name.as_bytes());
    input.push(b'\n');
    input.push(ALG_ED25519);
    input.extend_from_slice(public);
    let hash = digest(&SHA256, &input);
    let mut id = [0u8; 4];
    id.copy_from_slice(&hash.as_ref()[..4]);
    id
}

/// What went wrong with the checkpoint key file.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("checkpoint key {}: {reason}", path.display())]
    Io { path: PathBuf, reason: String },
    #[error(
        "checkpoint key {} is readable by others (mode {mode:o}); it must be owner-only (chmod 600)",
        path.display()
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("checkpoint key: {0}")]
    Invalid(String),
}

/// The auditor's checkpoint-signing key. Its `Debug` shows the name and key id only.
pub struct SigningKey {
    name: String,
    pair: Ed25519KeyPair,
    id: [u8; 4],
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("name", &self.name)
            .field("id", &HEXLOWER.encode(&self.id))
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh key's PKCS#8 document.
    pub fn generate_pkcs8() -> Result<Vec<u8>, KeyError> {
        Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map(|doc| doc.as_ref().to_vec())
            .map_err(|_| KeyError::Invalid("the system random generator failed".into()))
    }

    /// The key named `name` (the checkpoint origin) from a PKCS#8 document.
    pub fn from_pkcs8(name: &str, pkcs8: &[u8]) -> Result<SigningKey, KeyError> {
        if !valid_key_name(name) {
            return Err(KeyError::Invalid(format!(
                "{name:?} cannot name a key: it must be non-empty, without spaces or `+`"
            )));
        }
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8)
            .map_err(|e| KeyError::Invalid(format!("not an Ed25519 PKCS#8 key: {e}")))?;
        let id = key_hash(name, pair.public_key().as_ref());
        Ok(SigningKey {
            name: name.to_owned(),
            pair,
            id,
        })
    }

    /// Loads the key at `path`, generating it (owner-only) if the file does not exist.
    /// Refuses a file that its group or others may read or write.
    pub fn load_or_create(path: &Path, name: &str) -> Result<SigningKey, KeyError> {
        let io = |e: std::io::Error| KeyError::Io {
            path: path.to_owned(),
            reason: e.to_string(),
        };
        if !path.exists() {
            let pkcs8 = SigningKey::generate_pkcs8()?;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            match options.open(path) {
                Ok(mut file) => {
                    file.write_all(&pkcs8).map_err(io)?;
                    file.sync_all().map_err(io)?;
                    tracing::info!(path = %path.display(), "checkpoint key generated");
                }
                // Another process created it first: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io(e)),
            }
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(path).map_err(io)?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(KeyError::Permissions {
                    path: path.to_owned(),
                    mode: mode & 0o777,
                });
            }
        }
        let pkcs8 = std::fs::read(path).map_err(io)?;
        SigningKey::from_pkcs8(name, &pkcs8)
    }

    /// The key's name (the checkpoint origin).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The public verifier key.
    pub fn verifier(&self) -> Verifier {
        let mut public = [0u8; 32];
        public.copy_from_slice(self.pair.public_key().as_ref());
        Verifier {
            name: self.name.clone(),
            id: self.id,
            public,
        }
    }

    /// The signed note of a checkpoint body.
    pub fn sign(&self, body: &CheckpointBody) -> String {
        let text = body.to_text();
        let signature = self.pair.sign(text.as_bytes());
        let mut blob = Vec::with_capacity(4 + 64);
        blob.extend_from_slice(&self.id);
        blob.extend_from_slice(signature.as_ref());
        format!(
            "{text}\n{SIGNATURE_PREFIX}{} {}\n",
            self.name,
            BASE64.encode(&blob)
        )
    }
}

/// A note verifier key: what a security team holds to check the auditor's checkpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    name: String,
    id: [u8; 4],
    public: [u8; 32],
}

impl fmt::Display for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut key = vec![ALG_ED25519];
        key.extend_from_slice(&self.public);
        write!(
            f,
            "{}+{}+{}",
            self.name,
            HEXLOWER.encode(&self.id),
            BASE64.encode(&key)
        )
    }
}

impl Verifier {
    /// Parses `<name>+<hex key hash>+<base64(0x01 ‖ public key)>`, checking the key hash.
    pub fn parse(text: &str) -> Result<Verifier, NoteError> {
        let bad = |why: &str| NoteError::BadVerifierKey(why.to_owned());
        // The base64 key may itself contain `+`: only the first two separate fields.
        let mut parts = text.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("expected <name>+<key hash>+<key>"));
        };
        if !valid_key_name(name) {
            return Err(bad("bad key name"));
        }
        let id: [u8; 4] = HEXLOWER
            .decode(id.as_bytes())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("the key hash is not 8 lowercase hex digits"))?;
        let key = BASE64
            .decode(key.as_bytes())
            .map_err(|_| bad("the key is not base64"))?;
        let Some((&ALG_ED25519, public)) = key.split_first() else {
            return Err(bad("not an Ed25519 key"));
        };
        let public: [u8; 32] = public
            .try_into()
            .map_err(|_| bad("an Ed25519 key is 32 bytes"))?;
        if key_hash(name, &public) != id {
            return Err(bad("the key hash does not match the key"));
        }
        Ok(Verifier {
            name: name.to_owned(),
            id,
            public,
        })
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Checks a signed note against this key and returns the checkpoint it carries, whose
    /// origin must be the key's name. Signatures by other keys are ignored.
    pub fn verify(&self, note: &str) -> Result<CheckpointBody, NoteError> {
        let bad = |why: &str| NoteError::Malformed(why.to_owned());
        let split = note
            .rfind("\n\n")
            .ok_or_else(|| bad("no blank line before the signatures"))?;
        let (text, signatures) = (&note[..=split], &note[split + 2..]);
        let signatures = signatures
            .strip_suffix('\n')
            .ok_or_else(|| bad("the signatures do not end with a newline"))?;
        let mut found = false;
        for line in signatures.split('\n') {
            let rest = line
                .strip_prefix(SIGNATURE_PREFIX)
                .ok_or_else(|| bad("a signature line does not start with an em dash"))?;
            let (name, blob) = rest
                .split_once(' ')
                .ok_or_else(|| bad("a signature line has no signature"))?;
            let blob = BASE64
                .decode(blob.as_bytes())
                .map_err(|_| bad("a signature is not base64"))?;
            if blob.len() < 5 {
                return Err(bad("a signature is too short"));
            }
            if name != self.name || blob[..4] != self.id {
                continue;
            }
            found = true;
            UnparsedPublicKey::new(&ED25519, &self.public)
                .verify(text.as_bytes(), &blob[4..])
                .map_err(|_| NoteError::BadSignature(self.name.clone()))?;
        }
        if !found {
            return Err(NoteError::NoSignature(self.name.clone()));
        }
        let body = CheckpointBody::parse(text)?;
        if body.origin != self.name {
            return Err(NoteError::WrongOrigin {
                expected: self.name.clone(),
                found: body.origin,
            });
        }
        Ok(body)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;
    use crate::merkle::{empty_root, leaf_hash};

    const ORIGIN: &str = "trias.local/audit";

    fn key() -> SigningKey {
        SigningKey::from_pkcs8(ORIGIN, &SigningKey::generate_pkcs8().unwrap()).unwrap()
    }

    fn body(size: u64) -> CheckpointBody {
        CheckpointBody {
            origin: ORIGIN.into(),
            tree_size: size,
            root: leaf_hash(&size.to_be_bytes()),
        }
    }

    #[test]
    fn a_signed_checkpoint_verifies_and_round_trips() {
        let key = key();
        let note = key.sign(&body(42));
        let text = body(42).to_text();
        assert!(
            note.starts_with(&format!("{text}\n\u{2014} {ORIGIN} ")),
            "{note}"
        );
        assert_eq!(text.lines().count(), 3);
        let verifier = Verifier::parse(&key.verifier().to_string()).unwrap();
        assert_eq!(verifier, key.verifier());
        assert_eq!(verifier.verify(&note).unwrap(), body(42));
    }

    #[test]
    fn the_key_hash_follows_the_signed_note_spec() {
        let key = key();
        let vkey = key.verifier().to_string();
        let parts: Vec<&str> = vkey.splitn(3, '+').collect();
        assert_eq!(parts[0], ORIGIN);
        let public = &BASE64.decode(parts[2].as_bytes()).unwrap()[1..];
        let mut input = format!("{ORIGIN}\n").into_bytes();
        input.push(1);
        input.extend_from_slice(public);
        let hash = digest(&SHA256, &input);
        let expected = &hash.as_ref()[..4];
        assert_eq!(parts[1], HEXLOWER.encode(expected));
        // The signature line carries the same four bytes first.
        let note = key.sign(&body(1));
        let sig_line = note.lines().last().unwrap();
        let blob = BASE64
            .decode(sig_line.rsplit(' ').next().unwrap().as_bytes())
            .unwrap();
        assert_eq!(blob.len(), 68);
        assert_eq!(&blob[..4], expected);
    }

    #[test]
    fn tampered_body_is_refused() {
        let key = key();
        let note = key.sign(&body(7));
        let forged = note.replacen("\n7\n", "\n8\n", 1);
        assert_ne!(forged, note);
        assert_eq!(
            key.verifier().verify(&forged),
            Err(NoteError::BadSignature(ORIGIN.into()))
        );
        let other_root = note.replacen(
            &BASE64.encode(&body(7).root),
            &BASE64.encode(&empty_root()),
            1,
        );
        assert!(key.verifier().verify(&other_root).is_err());
    }

    #[test]
    fn tampered_signature_is_refused() {
        let key = key();
        let note = key.sign(&body(7));
        let (head, sig) = note.trim_end().rsplit_once(' ').unwrap();
        let mut blob = BASE64.decode(sig.as_bytes()).unwrap();
        blob[10] ^= 1;
        let forged = format!("{head} {}\n", BASE64.encode(&blob));
        assert_eq!(
            key.verifier().verify(&forged),
            Err(NoteError::BadSignature(ORIGIN.into()))
        );
    }

    #[test]
    fn another_key_is_not_trusted() {
        let note = key().sign(&body(3));
        assert_eq!(
            key().verifier().verify(&note),
            Err(NoteError::NoSignature(ORIGIN.into()))
        );
    }

    #[test]
    fn malformed_notes_and_keys_are_refused() {
        let key = key();
        let verifier = key.verifier();
        let note = key.sign(&body(3));
        let dashless = note.replace('\u{2014}', "-");
        for bad in ["", "no blank line\n", &dashless, note.trim_end()] {
            assert!(verifier.verify(bad).is_err(), "{bad:?}");
        }
        let vkey = verifier.to_string();
        let (head, _) = vkey.rsplit_once('+').unwrap();
        let short_key = format!("{head}+AQ==");
        let wrong_hash = vkey.replacen(&vkey[ORIGIN.len() + 1..ORIGIN.len() + 9], "00000000", 1);
        for bad in ["", "name+00000000", &short_key, &wrong_hash] {
            assert!(Verifier::parse(bad).is_err(), "{bad:?}");
        }
        for bad in ["o\n1\n", "o\n01\nAAAA\n", "o\n1\nAAAA\n", "o\n1\nAAAA"] {
            assert!(CheckpointBody::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn key_file_is_created_owner_only_and_refused_when_readable_by_others() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint-key.pk8");
        let first = SigningKey::load_or_create(&path, ORIGIN).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = SigningKey::load_or_create(&path, ORIGIN).unwrap();
        assert_eq!(first.verifier(), again.verifier(), "the same key is reused");
        assert!(!format!("{first:?}").contains("pair"));

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let error = SigningKey::load_or_create(&path, ORIGIN).unwrap_err();
        assert!(matches!(error, KeyError::Permissions { .. }), "{error}");
        assert!(error.to_string().contains("640"), "{error}");
    }
}
