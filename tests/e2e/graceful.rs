//! Graceful stop: SIGTERM to `trias up` while token requests pour in. Every request the
//! issuer answered with a token has its issuance in the auditor's log by the time the stack
//! has stopped (the issuer drains its requests, then flushes its outbox to the auditor, which
//! stops last), and nothing is left unshipped in the outbox.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sqlx::Connection;
use trias_tests::stack::{Stack, stdout};

async fn count(db: &std::path::Path, sql: &'static str, bind: &str) -> i64 {
    let url = format!("sqlite://{}?mode=ro", db.display());
    let mut connection = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let query = sqlx::query_as(sql);
    let query = if bind.is_empty() {
        query
    } else {
        query.bind(bind)
    };
    let (n,): (i64,) = query.fetch_one(&mut connection).await.unwrap();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_no_answered_issuance() {
    let mut stack = Stack::up(&[]).await;
    let url = format!("{}/oauth2/token", stack.get("issuer_url"));
    let client_id = stack.get("demo_client_id");
    let secret = stack.get("demo_client_secret");
    let http = reqwest::Client::new();
    let answered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..16 {
        let (http, url, client_id, secret) =
            (http.clone(), url.clone(), client_id.clone(), secret.clone());
        let (answered, stop) = (Arc::clone(&answered), Arc::clone(&stop));
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let response = http
                    .post(&url)
                    .basic_auth(&client_id, Some(&secret))
                    .form(&[
                        ("grant_type", "client_credentials"),
                        ("scope", "payments:create"),
                    ])
                    .send()
                    .await;
                match response {
                    Ok(r) if r.status() == 200 => {
                        let body: serde_json::Value = r.json().await.unwrap();
                        assert!(body["access_token"].is_string());
                        answered.fetch_add(1, Ordering::SeqCst);
                    }
                    // Refused once the issuer stops accepting: not an answer with a token.
                    Ok(_) | Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
        }));
    }
    // Stop while requests are in flight.
    while answered.load(Ordering::SeqCst) < 200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stopped = stack.stop().await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    assert!(
        stopped.status.success(),
        "{}\n{}",
        stdout(&stopped),
        stack.logs()
    );
    let answered = answered.load(Ordering::SeqCst);

    let outbox = trias_runtime::outbox::Outbox::open(
        trias_runtime::outbox::OutboxConfig::new(
            stack.data_dir.join("issuer/issuer-outbox.db"),
            "issuer",
        ),
        Arc::new(trias_runtime::clock::SystemClock),
    )
    .await
    .unwrap();
    assert_eq!(
        outbox.depth().await.unwrap(),
        0,
        "events left unshipped at stop"
    );
    outbox.close().await;
    let logged = count(
        &stack.data_dir.join("auditor/auditor.db"),
        "SELECT count(*) FROM entries WHERE kind = 1 AND client_id = ?",
        &client_id,
    )
    .await;
    // Every answered issuance is logged; a request the issuer finished while its client
    // saw the connection close may add one more.
    assert!(
        logged >= i64::try_from(answered).unwrap(),
        "{answered} tokens answered, {logged} issuances logged"
    );
    assert!(
        logged <= i64::try_from(answered).unwrap() + 16,
        "{answered} answered, {logged} logged"
    );
}

/// The flush on stop, where it matters: the auditor was away, so the shipper is waiting out
/// its backoff with a backlog when the auditor returns and the issuer is told to stop. The
/// stop ends the wait and ships the backlog before the issuer exits; nothing is left for a
/// next start that may never come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_flushes_a_backlog_the_shipper_was_backing_off_from() {
    use trias_proto::v1::{EventKind, QueryRequest};
    use trias_tests::auditor::{AuditorOptions, start_auditor};
    use trias_tests::{Backend, IssuerOptions, start_issuer};

    let auditor = start_auditor(AuditorOptions::on(Backend::Sqlite))
        .await
        .unwrap();
    let issuer = start_issuer(IssuerOptions {
        auditor_url: Some(auditor.url()),
        ..IssuerOptions::on(Backend::Sqlite)
    })
    .await
    .unwrap();
    let down = auditor.down().await;
    let mut jtis = Vec::new();
    for _ in 0..5 {
        let token = issuer.token_for(&["clerk"], "payments:read", "").await;
        jtis.push(
            trias_tests::claims(&token)["jti"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    // Failed attempts double the wait (50 ms, 100 ms, …): after 3.5 s it is over 3 s long.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(issuer.issuer.outbox().depth().await.unwrap() >= 5);
    let auditor = down.up().await;
    issuer.stop().await;

    let issued = QueryRequest {
        kinds: vec![EventKind::TokenIssued as i32],
        ..Default::default()
    };
    let logged = tokio::time::timeout(
        Duration::from_secs(5),
        auditor.wait_for(issued, |events| events.len() >= 5),
    )
    .await
    .expect("the issuer stopped without shipping its backlog");
    let mut logged: Vec<String> = logged.into_iter().map(|e| e.token_id).collect();
    logged.sort();
    jtis.sort();
    assert_eq!(logged, jtis);
    auditor.stop().await;
}
