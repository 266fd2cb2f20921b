//! `trias audit verify` against a running auditor: a clean log verifies, a saved checkpoint
//! is extended consistently, a forked or rolled-back log is refused, a row tampered behind
//! the auditor's back is caught (and located) by `--full`, and a wrong key verifies nothing.
//! The commands run through the CLI's own argument parser and report, as the binary does;
//! `cli/tests/exit_codes.rs` checks the binary's exit codes themselves.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::path::Path;

use trias_auditor::auditor::leaf;
use trias_auditor::checkpoint::{CheckpointBody, SigningKey};
use trias_auditor::merkle::leaf_hash;
use trias_cli::audit::{EXIT_FAILED, EXIT_USAGE, EXIT_VERIFIED, run_args};
use trias_proto::v1::{AppendRequest, AuditEvent, Checkpoint, GetCheckpointRequest};
use trias_tests::Backend;
use trias_tests::auditor::{AuditorHandle, AuditorOptions, start_auditor};

both_backends!(
    a_clean_log_verifies_with_and_without_full,
    a_saved_checkpoint_is_extended_consistently,
    a_forked_or_rolled_back_log_is_refused,
    a_tampered_leaf_fails_full_verification_naming_the_entry,
    a_wrong_key_verifies_nothing,
);

/// What `trias audit <args>` exits with, and what it printed (report or error).
async fn trias_audit(args: &[&str]) -> (u8, String) {
    let mut out = Vec::new();
    let result = run_args(args, &mut out).await;
    let mut text = String::from_utf8(out).unwrap();
    let code = match result {
        Ok(()) => EXIT_VERIFIED,
        Err(error) => {
            text.push_str(&error.to_string());
            error.exit_code()
        }
    };
    (code, text)
}

/// `trias audit verify` against `auditor` with `key` and further arguments.
async fn verify(auditor: &AuditorHandle, key: &str, more: &[&str]) -> (u8, String) {
    let url = format!("http://{}", auditor.grpc_addr);
    let pki = trias_tests::pki().dir.display().to_string();
    let token = auditor.access().token.clone();
    let mut args = vec![
        "verify",
        "--auditor",
        &url,
        "--key",
        key,
        "--pki",
        &pki,
        "--token",
        &token,
    ];
    args.extend_from_slice(more);
    trias_audit(&args).await
}

async fn append_n(auditor: &AuditorHandle, count: u64) -> Checkpoint {
    let mut grpc = auditor.grpc().await;
    let mut last = None;
    let events: Vec<AuditEvent> = (0..count)
        .map(|i| auditor.event("issuer", i + 1, &format!("user-{}", i % 7)))
        .collect();
    for batch in events.chunks(1000) {
        let response = grpc
            .append(AppendRequest {
                producer: "issuer".into(),
                events: batch.to_vec(),
            })
            .await
            .unwrap()
            .into_inner();
        last = response.checkpoint;
    }
    last.unwrap()
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

async fn a_clean_log_verifies_with_and_without_full(backend: Backend) {
    let Some(auditor) = start_auditor(AuditorOptions::on(backend)).await else {
        return;
    };
    let key = auditor.verifier().to_string();
    // The empty log is a log too.
    let (code, out) = verify(&auditor, &key, &["--full"]).await;
    assert_eq!(code, EXIT_VERIFIED, "{out}");
    assert!(out.contains("size 0"), "{out}");

    append_n(&auditor, 25).await;
    let (code, out) = verify(&auditor, &key, &[]).await;
    assert_eq!(code, EXIT_VERIFIED, "{out}");
    assert!(out.contains("trias.test/audit, size 25"), "{out}");
    assert!(out.contains("signature: valid"), "{out}");
    assert!(out.ends_with("verified\n"), "{out}");

    let (code, out) = verify(&auditor, &key, &["--full"]).await;
    assert_eq!(code, EXIT_VERIFIED, "{out}");
    assert!(
        out.contains("re-derived from 25 exported entries matches"),
        "{out}"
    );

    // The key from a file works the same.
    let key_file = auditor.dir.path().join("verifier.key");
    std::fs::write(&key_file, format!("{key}\n")).unwrap();
    let at = format!("@{}", key_file.display());
    assert_eq!(verify(&auditor, &at, &[]).await.0, EXIT_VERIFIED);
    auditor.stop().await;
}

async fn a_saved_checkpoint_is_extended_consistently(backend: Backend) {
    let Some(auditor) = start_auditor(AuditorOptions::on(backend)).await else {
        return;
    };
    let key = auditor.verifier().to_string();
    let saved = auditor.dir.path().join("checkpoint.note");
    append_n(&auditor, 3).await;
    let (code, out) = verify(&auditor, &key, &["--save", path_str(&saved)]).await;
    assert_eq!(code, EXIT_VERIFIED, "{out}");
    let first = std::fs::read_to_string(&saved).unwrap();
    assert!(first.starts_with("trias.test/audit\n3\n"), "{first}");

    // The saved note verifies offline with the key alone.
    let (code, out) = trias_audit(&[
        "verify",
        "--key",
        &key,
        "--checkpoint-file",
        path_str(&saved),
    ])
    .await;
    assert_eq!(code, EXIT_VERIFIED, "{out}");

    // More appends; the new checkpoint must extend the saved one.
    append_n(&auditor, 10).await;
    append_n(&auditor, 4).await;
    let args = ["--previous", path_str(&saved), "--save", path_str(&saved)];
    let (code, out) = verify(&auditor, &key, &args).await;
    assert_eq!(code, EXIT_VERIFIED, "{out}");
    assert!(
        out.contains("extends the saved checkpoint of size 3") && out.contains("by 14 entries"),
        "{out}"
    );
    assert!(
        std::fs::read_to_string(&saved)
            .unwrap()
            .starts_with("trias.test/audit\n17\n")
    );
    // Nothing appended since: the same size with the same root is consistent.
    let (code, out) = verify(&auditor, &key, &["--previous", path_str(&saved), "--full"]).await;
    assert_eq!(code, EXIT_VERIFIED, "{out}");
    assert!(out.contains("by 0 entries"), "{out}");
    auditor.stop().await;
}

/// A checkpoint the auditor's own key signed but that is not part of its log: what a
/// compromised auditor would show one party while showing another the real log.
fn forged(auditor: &AuditorHandle, tree_size: u64) -> String {
    let key = SigningKey::load_or_create(
        &auditor.dir.path().join("data").join("checkpoint-key.pk8"),
        "trias.test/audit",
    )
    .unwrap();
    assert_eq!(key.verifier(), auditor.verifier());
    key.sign(&CheckpointBody {
        origin: "trias.test/audit".into(),
        tree_size,
        root: leaf_hash(b"a forked log"),
    })
}

async fn a_forked_or_rolled_back_log_is_refused(backend: Backend) {
    let Some(auditor) = start_auditor(AuditorOptions::on(backend)).await else {
        return;
    };
    let key = auditor.verifier().to_string();
    append_n(&auditor, 9).await;
    let note = auditor.dir.path().join("previous.note");
    let previous = ["--previous", path_str(&note)];
    let save = ["--save", path_str(&note)];

    // Same size, another root.
    std::fs::write(&note, forged(&auditor, 9)).unwrap();
    let (code, out) = verify(&auditor, &key, &[&previous[..], &save[..]].concat()).await;
    assert_eq!(code, EXIT_FAILED, "{out}");
    assert!(
        out.contains("two different roots for size 9") && out.contains("forked"),
        "{out}"
    );
    // A failed verification saves nothing.
    assert!(
        std::fs::read_to_string(&note)
            .unwrap()
            .contains(&data_encoding::BASE64.encode(&leaf_hash(b"a forked log")))
    );

    // A smaller tree that is not a prefix of the log.
    std::fs::write(&note, forged(&auditor, 4)).unwrap();
    let (code, out) = verify(&auditor, &key, &previous).await;
    assert_eq!(code, EXIT_FAILED, "{out}");
    assert!(
        out.contains("size 9 is not consistent with the saved checkpoint of size 4"),
        "{out}"
    );

    // A larger tree than the auditor now signs: the log went backwards.
    std::fs::write(&note, forged(&auditor, 12)).unwrap();
    let (code, out) = verify(&auditor, &key, &previous).await;
    assert_eq!(code, EXIT_FAILED, "{out}");
    assert!(out.contains("went backwards"), "{out}");
    assert!(
        out.contains("has size 12, the auditor now signs size 9"),
        "{out}"
    );

    // A saved note that is not signed by the key at all.
    std::fs::write(&note, "trias.test/audit\n9\nnot a note\n").unwrap();
    let (code, out) = verify(&auditor, &key, &previous).await;
    assert_eq!(code, EXIT_FAILED, "{out}");
    assert!(out.contains("previous checkpoint"), "{out}");

    // A missing file verifies nothing: a usage error, not a failed check.
    std::fs::remove_file(&note).unwrap();
    let (code, out) = verify(&auditor, &key, &previous).await;
    assert_eq!(code, EXIT_USAGE, "{out}");
    auditor.stop().await;
}

async fn a_tampered_leaf_fails_full_verification_naming_the_entry(backend: Backend) {
    let Some(auditor) = start_auditor(AuditorOptions::on(backend)).await else {
        return;
    };
    let key = auditor.verifier().to_string();
    // Enough entries that the tampered one lies past the first kept frontier.
    append_n(&auditor, 5000).await;
    let (code, out) = verify(&auditor, &key, &["--full"]).await;
    assert_eq!(code, EXIT_VERIFIED, "{out}");

    // Someone with the database owner's credentials drops the guard and rewrites entry
    // 4321 so that it is about someone else.
    let tampered = 4321;
    let exported = auditor.export().await;
    let mut forged = exported[tampered].event.clone().unwrap();
    forged.subject = "someone-else".into();
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&auditor.database_url())
        .await
        .unwrap();
    let drop_guard = match backend {
        Backend::Sqlite => "DROP TRIGGER entries_no_update",
        Backend::Postgres => "DROP TRIGGER entries_append_only ON entries",
    };
    sqlx::query(drop_guard).execute(&pool).await.unwrap();
    sqlx::query("UPDATE entries SET subject = $1, leaf = $2 WHERE idx = $3")
        .bind("someone-else")
        .bind(leaf(&forged))
        .bind(tampered as i64)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    // The signature still verifies: only re-deriving the tree shows the change.
    let (code, out) = verify(&auditor, &key, &[]).await;
    assert_eq!(code, EXIT_VERIFIED, "{out}");
    let (code, out) = verify(&auditor, &key, &["--full"]).await;
    assert_eq!(code, EXIT_FAILED, "{out}");
    assert!(out.contains("verification failed"), "{out}");
    assert!(
        out.contains("re-derived from the 5000 exported entries")
            && out.contains("is not the signed root"),
        "{out}"
    );
    assert!(
        out.contains("entry 4321 is the first that differs from the signed log"),
        "{out}"
    );
    auditor.stop().await;
}

async fn a_wrong_key_verifies_nothing(backend: Backend) {
    let Some(auditor) = start_auditor(AuditorOptions::on(backend)).await else {
        return;
    };
    append_n(&auditor, 3).await;
    // Another key under the same name: the note carries no signature by it.
    let impostor =
        SigningKey::from_pkcs8("trias.test/audit", &SigningKey::generate_pkcs8().unwrap()).unwrap();
    let (code, out) = verify(&auditor, &impostor.verifier().to_string(), &[]).await;
    assert_eq!(code, EXIT_FAILED, "{out}");
    assert!(
        out.contains(
            "the auditor's latest checkpoint: the note has no signature by trias.test/audit"
        ),
        "{out}"
    );
    // A key of another log.
    let other = SigningKey::from_pkcs8(
        "other.example/audit",
        &SigningKey::generate_pkcs8().unwrap(),
    )
    .unwrap();
    let (code, out) = verify(&auditor, &other.verifier().to_string(), &["--full"]).await;
    assert_eq!(code, EXIT_FAILED, "{out}");
    assert!(out.contains("no signature by other.example/audit"), "{out}");
    // A malformed key is a usage error.
    let (code, out) = verify(&auditor, "trias.test/audit+00+AAAA", &[]).await;
    assert_eq!(code, EXIT_USAGE, "{out}");
    // The checkpoint the right key verifies is the one the auditor serves.
    let served = auditor
        .grpc()
        .await
        .get_checkpoint(GetCheckpointRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(served.tree_size, 3);
    auditor.stop().await;
}
