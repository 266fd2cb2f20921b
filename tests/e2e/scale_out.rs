//! Scale-out on PostgreSQL: two issuers on one database behind one `iss`, and two validators
//! (each following a different issuer) on one ledger. The invariants that must hold across
//! instances, not only within one process: an authorization code and a refresh token are
//! single-use whichever issuer sees them (also when both see one at once); dual control holds
//! across validators (also for attempts at the same moment); a revocation made at one issuer
//! reaches the validator that follows the other.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::time::Duration;

use trias_proto::v1::Reason;
use trias_tests::validator::{ValidatorHandle, ValidatorOptions, start_validator};
use trias_tests::{Backend, IssuerHandle, IssuerOptions, oauth_error, start_issuer};

struct Cluster {
    a: IssuerHandle,
    b: IssuerHandle,
    v1: ValidatorHandle,
    v2: ValidatorHandle,
}

/// Issuers a and b on one database (b announces a's `iss`), v1 following a and v2
/// following b on one ledger. `None` without a PostgreSQL server.
async fn cluster() -> Option<Cluster> {
    let a = start_issuer(IssuerOptions {
        policy: trias_tests::policy_without_static_conflict(),
        producer: Some("issuer-a".into()),
        ..IssuerOptions::on(Backend::Postgres)
    })
    .await?;
    let b = start_issuer(IssuerOptions {
        policy: trias_tests::policy_without_static_conflict(),
        shared_database: a.database_url(),
        issuer_url: Some(a.http_base()),
        producer: Some("issuer-b".into()),
        clock: a.clock.clone(),
        ..IssuerOptions::on(Backend::Postgres)
    })
    .await?;
    let v1 = start_validator(
        &a,
        ValidatorOptions {
            policy: trias_tests::policy_without_static_conflict(),
            producer: Some("validator-1".into()),
            ..ValidatorOptions::on(Backend::Postgres)
        },
    )
    .await?;
    let v2 = start_validator(
        &b,
        ValidatorOptions {
            policy: trias_tests::policy_without_static_conflict(),
            shared_database: v1.database_url(),
            producer: Some("validator-2".into()),
            ..ValidatorOptions::on(Backend::Postgres)
        },
    )
    .await?;
    Some(Cluster { a, b, v1, v2 })
}

impl Cluster {
    async fn stop(self) {
        // The sharers first: the owners drop the databases.
        self.v2.stop().await;
        self.v1.stop().await;
        self.b.stop().await;
        self.a.stop().await;
    }
}

/// Polls `validator` until it denies `token` as revoked; fails after one second.
async fn revoked_within_a_second(validator: &ValidatorHandle, token: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        let decision = validator
            .check(token, "payment.create", "payment/probe", "payments")
            .await;
        if decision.reason() == Reason::Revoked {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a revocation made at the other issuer did not reach this validator within 1 s: {decision:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_issuers_and_two_validators_on_one_postgresql() {
    let Some(c) = cluster().await else {
        eprintln!("skipping scale-out test: TRIAS_TEST_POSTGRES_URL is not set");
        return;
    };

    // A client and a user created through a, used through b: one database.
    let frontend =
        c.a.frontend(&["payments:create", "payments:approve"], true)
            .await;
    c.a.user("alice", "alice password", &["clerk", "approver"], false)
        .await;
    let (login, verifier) = frontend.login("alice", "alice password", "payments:create");
    let code =
        c.a.grpc()
            .await
            .login(login)
            .await
            .unwrap()
            .into_inner()
            .code;
    // The code is redeemed at b, once: a second redemption at a is refused.
    let issued =
        c.b.grpc()
            .await
            .token(frontend.exchange(&code, &verifier))
            .await
            .unwrap()
            .into_inner();
    let again =
        c.a.grpc()
            .await
            .token(frontend.exchange(&code, &verifier))
            .await
            .unwrap_err();
    assert_eq!(oauth_error(&again).as_deref(), Some("invalid_grant"));

    // A replayed code revokes what it issued (RFC 6749 §4.1.2): the replay was refused at
    // a, and within a second the validator following b denies the token b minted.
    revoked_within_a_second(&c.v2, &issued.access_token).await;

    // A token minted by b verifies at the validator following a (one key set, one `iss`).
    let (login, verifier) = frontend.login("alice", "alice password", "payments:create");
    let code =
        c.a.grpc()
            .await
            .login(login)
            .await
            .unwrap()
            .into_inner()
            .code;
    let issued =
        c.b.grpc()
            .await
            .token(frontend.exchange(&code, &verifier))
            .await
            .unwrap()
            .into_inner();
    let created =
        c.v1.check(
            &issued.access_token,
            "payment.create",
            "payment/1",
            "payments",
        )
        .await;
    assert!(created.allowed, "{created:?}");

    // Refresh rotation is single-use across issuers: spent at a, replayed at b.
    let first = issued.refresh_token.clone();
    let rotated =
        c.a.grpc()
            .await
            .token(frontend.refresh(&first))
            .await
            .unwrap()
            .into_inner();
    let replay =
        c.b.grpc()
            .await
            .token(frontend.refresh(&first))
            .await
            .unwrap_err();
    assert_eq!(oauth_error(&replay).as_deref(), Some("invalid_grant"));
    // The replay at b revoked the family: the rotated token is dead at a too, and its
    // access token is denied by the validator following a within a second.
    let dead =
        c.a.grpc()
            .await
            .token(frontend.refresh(&rotated.refresh_token))
            .await
            .unwrap_err();
    assert_eq!(oauth_error(&dead).as_deref(), Some("invalid_grant"));
    revoked_within_a_second(&c.v1, &rotated.access_token).await;

    // The same refresh token spent at both issuers at the same moment: one child only.
    for round in 0..5 {
        let (login, verifier) = frontend.login("alice", "alice password", "payments:create");
        let code =
            c.a.grpc()
                .await
                .login(login)
                .await
                .unwrap()
                .into_inner()
                .code;
        let family =
            c.a.grpc()
                .await
                .token(frontend.exchange(&code, &verifier))
                .await
                .unwrap()
                .into_inner();
        let (mut ga, mut gb) = (c.a.grpc().await, c.b.grpc().await);
        let (ra, rb) = tokio::join!(
            ga.token(frontend.refresh(&family.refresh_token)),
            gb.token(frontend.refresh(&family.refresh_token)),
        );
        let won = usize::from(ra.is_ok()) + usize::from(rb.is_ok());
        assert_eq!(won, 1, "round {round}: {ra:?} {rb:?}");
    }

    // Dual control across validators: alice creates payment/7 at v1 and may not approve it
    // at v2; bob may.
    let both =
        c.a.token_for(
            &["clerk", "approver"],
            "payments:create payments:approve",
            "",
        )
        .await;
    let bob = c.b.token_for(&["approver"], "payments:approve", "").await;
    assert!(
        c.v1.check(&both, "payment.create", "payment/7", "payments")
            .await
            .allowed
    );
    let conflict =
        c.v2.check(&both, "payment.approve", "payment/7", "payments")
            .await;
    assert_eq!(conflict.reason(), Reason::DutyConflict, "{conflict:?}");
    assert!(
        c.v2.check(&bob, "payment.approve", "payment/7", "payments")
            .await
            .allowed
    );

    // Two conflicting attempts at the same moment, one at each validator: one wins.
    for n in 0..10 {
        let object = format!("payment/race-{n}");
        let (create, approve) = tokio::join!(
            c.v1.check(&both, "payment.create", &object, "payments"),
            c.v2.check(&both, "payment.approve", &object, "payments"),
        );
        assert_eq!(
            usize::from(create.allowed) + usize::from(approve.allowed),
            1,
            "{object}: {create:?} {approve:?}"
        );
        let loser = if create.allowed { &approve } else { &create };
        assert_eq!(loser.reason(), Reason::DutyConflict);
    }
    c.stop().await;
}
