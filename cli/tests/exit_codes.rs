//! The `trias` binary's exit codes for `trias audit verify`, which scripts rely on: 0
//! verified, 1 verification failed, 2 usage or connection error. Offline (a saved
//! checkpoint and a key), so no auditor is needed; `tests/e2e/audit_verify.rs` covers the
//! checks against a running auditor.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::process::{Command, Output};

use trias_auditor::checkpoint::{CheckpointBody, SigningKey};
use trias_auditor::merkle::empty_root;

fn trias(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trias"))
        .args(args)
        .env_remove("TRIAS_AUDIT_KEY")
        .env_remove("TRIAS_AUDITOR_GRPC")
        .output()
        .unwrap()
}

fn key(name: &str) -> SigningKey {
    SigningKey::from_pkcs8(name, &SigningKey::generate_pkcs8().unwrap()).unwrap()
}

#[test]
fn audit_verify_exits_0_1_or_2() {
    let dir = tempfile::tempdir().unwrap();
    let signer = key("trias.test/audit");
    let note = signer.sign(&CheckpointBody {
        origin: "trias.test/audit".into(),
        tree_size: 0,
        root: empty_root(),
    });
    let file = dir.path().join("checkpoint");
    std::fs::write(&file, &note).unwrap();
    let file = file.to_str().unwrap();
    let good = signer.verifier().to_string();
    let wrong = key("trias.test/audit").verifier().to_string();

    let out = trias(&["audit", "verify", "--key", &good, "--checkpoint-file", file]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("verified\n"));

    let out = trias(&[
        "audit",
        "verify",
        "--key",
        &wrong,
        "--checkpoint-file",
        file,
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("verification failed") && stderr.contains("no signature"),
        "{stderr}"
    );

    // A bad key, a missing file, a missing flag, conflicting flags: nothing verified.
    let missing = dir.path().join("missing");
    for args in [
        vec![
            "audit",
            "verify",
            "--key",
            "nonsense",
            "--checkpoint-file",
            file,
        ],
        vec![
            "audit",
            "verify",
            "--key",
            &good,
            "--checkpoint-file",
            missing.to_str().unwrap(),
        ],
        vec!["audit", "verify", "--checkpoint-file", file],
        vec![
            "audit",
            "verify",
            "--key",
            &good,
            "--checkpoint-file",
            file,
            "--full",
        ],
    ] {
        let out = trias(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    }

    // No auditor listening: a connection error.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let out = trias(&["audit", "verify", "--auditor", &url, "--key", &good]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    let help = trias(&["audit", "verify", "--help"]);
    assert_eq!(help.status.code(), Some(0));
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("Exit codes") && help.contains("--previous"),
        "{help}"
    );
}
