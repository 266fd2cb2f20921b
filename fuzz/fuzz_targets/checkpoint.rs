//! Fuzzes the auditor's checkpoints and signed notes (`trias_auditor::checkpoint`): the
//! checkpoint body parser, the note verifier key parser, and note verification against one
//! fixed key, on any text and on notes that key signed and the fuzzer then edited.
//!
//! Invariants: nothing panics; a parsed body or key written out again parses to the same
//! value; a body with a one-line origin survives writing and parsing; a note the fixed key
//! signed verifies as exactly the body signed (or is refused for its origin); a note edited
//! after signing, or any note the fuzzer wrote by itself, never verifies.

#![no_main]

use std::sync::LazyLock;

use arbitrary::Arbitrary;
use data_encoding::{BASE64, HEXLOWER};
use libfuzzer_sys::fuzz_target;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use trias_auditor::checkpoint::{CheckpointBody, NoteError, SigningKey, Verifier};

const NAME: &str = "trias.local/audit";
const SEED: [u8; 32] = [0x17; 32];

/// The fixed key pair, for signing texts that `SigningKey::sign` would not produce.
static PAIR: LazyLock<Ed25519KeyPair> =
    LazyLock::new(|| Ed25519KeyPair::from_seed_unchecked(&SEED).expect("a valid seed"));

/// The same key as the auditor holds it, from a PKCS#8 v2 document built around the seed
/// (ring's own template), so that every run uses the same key.
static KEY: LazyLock<SigningKey> = LazyLock::new(|| {
    let mut pkcs8 = vec![
        0x30, 0x53, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    pkcs8.extend_from_slice(&SEED);
    pkcs8.extend_from_slice(&[0xa1, 0x23, 0x03, 0x21, 0x00]);
    pkcs8.extend_from_slice(PAIR.public_key().as_ref());
    SigningKey::from_pkcs8(NAME, &pkcs8).expect("the fixed PKCS#8 document is accepted")
});

static VERIFIER: LazyLock<Verifier> = LazyLock::new(|| KEY.verifier());

/// The 4-byte key id, as the verifier key writes it.
static KEY_ID: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let text = VERIFIER.to_string();
    let id = text
        .split('+')
        .nth(1)
        .expect("a verifier key has three fields");
    HEXLOWER.decode(id.as_bytes()).expect("hex")
});

#[derive(Debug, Arbitrary)]
enum Input<'a> {
    /// Any text as a checkpoint body.
    Body(&'a str),
    /// Any text as a verifier key.
    Verifier(&'a str),
    /// Any text as a note, checked with the fixed key.
    Note(&'a str),
    /// A body built from parts, written, parsed, signed and verified.
    Built {
        own_origin: bool,
        origin: &'a str,
        tree_size: u64,
        root: [u8; 32],
    },
    /// Any text signed by the fixed key, with other signature lines, then perhaps edited.
    Signed {
        text: &'a str,
        before: Vec<Line<'a>>,
        after: Vec<Line<'a>>,
        edit: Option<(u16, u8)>,
    },
}

/// A signature line other than the fixed key's.
#[derive(Debug, Arbitrary)]
enum Line<'a> {
    /// By another name, or by the same name with another key id.
    Other {
        same_name: bool,
        name: &'a str,
        id: [u8; 4],
        signature: &'a [u8],
    },
    Raw(&'a str),
}

fn signature_line(name: &str, blob: &[u8]) -> String {
    format!("\u{2014} {name} {}\n", BASE64.encode(blob))
}

fn sign(text: &str) -> String {
    let mut blob = KEY_ID.clone();
    blob.extend_from_slice(PAIR.sign(text.as_bytes()).as_ref());
    signature_line(NAME, &blob)
}

fn other(line: &Line<'_>) -> String {
    match line {
        Line::Other {
            same_name,
            name,
            id,
            signature,
        } => {
            // The fixed key's id under its own name would be a signature by it: skip that one.
            let id = if *same_name && id[..] == KEY_ID[..] {
                [!id[0], id[1], id[2], id[3]]
            } else {
                *id
            };
            let mut blob = id.to_vec();
            blob.extend_from_slice(signature);
            signature_line(if *same_name { NAME } else { name }, &blob)
        }
        Line::Raw(text) => format!("{text}\n"),
    }
}

fuzz_target!(|input: Input<'_>| {
    match input {
        Input::Body(text) => {
            if let Ok(body) = CheckpointBody::parse(text) {
                assert_eq!(CheckpointBody::parse(&body.to_text()), Ok(body));
            }
        }
        Input::Verifier(text) => {
            if let Ok(verifier) = Verifier::parse(text) {
                assert_eq!(Verifier::parse(&verifier.to_string()), Ok(verifier));
            }
        }
        Input::Note(note) => {
            assert!(
                VERIFIER.verify(note).is_err(),
                "a note nobody signed verifies"
            );
        }
        Input::Built {
            own_origin,
            origin,
            tree_size,
            root,
        } => {
            let origin = if own_origin { NAME } else { origin };
            let body = CheckpointBody {
                origin: origin.to_owned(),
                tree_size,
                root,
            };
            // The auditor's origin is a key name, which never spans lines.
            if !origin.is_empty() && !origin.contains('\n') {
                assert_eq!(CheckpointBody::parse(&body.to_text()).as_ref(), Ok(&body));
                let verified = VERIFIER.verify(&KEY.sign(&body));
                if origin == NAME {
                    assert_eq!(verified, Ok(body));
                } else {
                    assert!(
                        matches!(verified, Err(NoteError::WrongOrigin { .. })),
                        "{verified:?}"
                    );
                }
            } else {
                let _ = VERIFIER.verify(&KEY.sign(&body));
            }
        }
        Input::Signed {
            text,
            before,
            after,
            edit,
        } => {
            let mut note = format!("{text}\n");
            for line in &before {
                note.push_str(&other(line));
            }
            note.push_str(&sign(text));
            for line in &after {
                note.push_str(&other(line));
            }
            let (note, edited) = match edit {
                Some((at, bit)) if !text.is_empty() => {
                    // Flip one low bit of a byte of the signed text, keeping it ASCII-safe.
                    let mut bytes = note.into_bytes();
                    let at = usize::from(at) % text.len();
                    if !bytes[at].is_ascii() {
                        return;
                    }
                    bytes[at] ^= 1 << (bit % 7);
                    (String::from_utf8(bytes).expect("ASCII stays ASCII"), true)
                }
                _ => (note, false),
            };
            let Ok(body) = VERIFIER.verify(&note) else {
                return;
            };
            assert!(!edited, "an edited note verifies: {note:?}");
            // What verified is what was signed.
            assert_eq!(CheckpointBody::parse(text).as_ref(), Ok(&body));
            assert_eq!(body.origin, NAME);
        }
    }
});
