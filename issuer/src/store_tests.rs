//! The storage contract, run against both backends: SQLite always, PostgreSQL when
//! `TRIAS_TEST_POSTGRES_URL` names a server (each test creates its own database there).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::collections::BTreeSet;

use trias_policy::{GrantType, Policy, RoleError};

use crate::store::{
    Approval, ClientRecord, CodeRecord, FamilyRecord, Redeem, RoleGrantRecord, Spend, Store,
    StoreError,
};

/// A store on the named backend, or `None` (skipped, with a message) for PostgreSQL when no
/// server is configured.
async fn open(backend: &str) -> Option<(Store, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let url = match backend {
        "sqlite" => format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("issuer.db").display()
        ),
        _ => trias_runtime::testing::fresh_postgres().await?.url,
    };
    Some((Store::open(&url).await.unwrap(), dir))
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some((store, _dir)) = super::open("sqlite").await {
                    super::$name(store).await;
                }
            })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some((store, _dir)) = super::open("postgres").await {
                    super::$name(store).await;
                }
            })*
        }
    };
}

both_backends!(
    clients_are_unique,
    conflicting_roles_are_refused_and_nothing_is_written,
    concurrent_conflicting_grants_cannot_both_pass,
    a_grant_is_approved_once_and_never_by_its_requester,
    a_code_is_redeemed_once_and_a_replay_revokes_what_it_issued,
    concurrent_refreshes_rotate_exactly_once,
    refresh_by_another_client_changes_nothing,
    revocations_are_numbered_and_replayed_in_order,
    a_new_key_retires_the_current_one,
);

fn policy() -> Policy {
    Policy::from_toml("sample", trias_policy::SAMPLE).unwrap()
}

fn client(id: &str) -> ClientRecord {
    ClientRecord {
        client_id: id.into(),
        name: "n".into(),
        secret_hash: Some(vec![1, 2, 3]),
        redirect_uris: vec!["https://a.example/cb".into()],
        grant_types: BTreeSet::from([GrantType::ClientCredentials, GrantType::RefreshToken]),
        scopes: BTreeSet::from(["payments:read".to_owned()]),
        public: false,
        created_at: 1,
    }
}

fn family(id: &str, client_id: &str) -> FamilyRecord {
    FamilyRecord {
        family_id: id.into(),
        client_id: client_id.into(),
        subject: "u-1".into(),
        scope: "payments:read".into(),
        audience: "payments".into(),
        acr: "pwd".into(),
        auth_time: 100,
        created_at: 100,
        expires_at: 10_000,
        revoked_at: None,
    }
}

async fn clients_are_unique(store: Store) {
    store.insert_client(&client("c-1")).await.unwrap();
    let again = store.insert_client(&client("c-1")).await.unwrap_err();
    assert!(
        matches!(again, StoreError::AlreadyExists(ref what) if what == "client c-1"),
        "{again:?}"
    );
    let read = store.client("c-1").await.unwrap().unwrap();
    assert_eq!(read.grant_types, client("c-1").grant_types);
    assert_eq!(read.redirect_uris, client("c-1").redirect_uris);
    assert!(store.client("c-2").await.unwrap().is_none());
}

async fn conflicting_roles_are_refused_and_nothing_is_written(store: Store) {
    let policy = policy();
    store.insert_client(&client("s")).await.unwrap();
    store
        .assign_role("s", "clerk", "g1", &policy, 1)
        .await
        .unwrap()
        .unwrap();
    let refused = store
        .assign_role("s", "approver", "g2", &policy, 2)
        .await
        .unwrap();
    assert!(
        matches!(refused, Err(RoleError::Conflict { ref conflict, .. }) if conflict == "payments maker-checker")
    );
    assert_eq!(
        store.roles_of("s").await.unwrap(),
        BTreeSet::from(["clerk".to_owned()])
    );
}

async fn concurrent_conflicting_grants_cannot_both_pass(store: Store) {
    let policy = policy();
    for round in 0..5 {
        let subject = format!("s{round}");
        let (a, b) = tokio::join!(
            store.assign_role(&subject, "clerk", "g1", &policy, 1),
            store.assign_role(&subject, "approver", "g2", &policy, 1),
        );
        let passed = [a.unwrap().is_ok(), b.unwrap().is_ok()];
        assert_eq!(
            passed.iter().filter(|p| **p).count(),
            1,
            "round {round}: {passed:?}"
        );
        assert_eq!(store.roles_of(&subject).await.unwrap().len(), 1);
    }
}

async fn a_grant_is_approved_once_and_never_by_its_requester(store: Store) {
    let policy = policy();
    let grant = RoleGrantRecord {
        id: "g-1".into(),
        subject: "u-9".into(),
        role: "approver".into(),
        justification: "j".into(),
        requested_by: "admin-a".into(),
        approved_by: None,
        state: "pending".into(),
        requested_at: 10,
        expires_at: 1000,
    };
    store.insert_role_grant(&grant).await.unwrap();
    assert!(matches!(
        store
            .approve_grant("g-1", "admin-a", &policy, 20)
            .await
            .unwrap(),
        Approval::NotApprovable
    ));
    assert!(matches!(
        store
            .approve_grant("g-1", "u-9", &policy, 20)
            .await
            .unwrap(),
        Approval::NotApprovable
    ));
    assert!(matches!(
        store
            .approve_grant("g-1", "admin-b", &policy, 2000)
            .await
            .unwrap(),
        Approval::NotApprovable
    ));
    let (x, y) = tokio::join!(
        store.approve_grant("g-1", "admin-b", &policy, 20),
        store.approve_grant("g-1", "admin-c", &policy, 20),
    );
    let approved = [x.unwrap(), y.unwrap()]
        .iter()
        .filter(|a| matches!(a, Approval::Approved))
        .count();
    assert_eq!(approved, 1);
    assert_eq!(
        store.roles_of("u-9").await.unwrap(),
        BTreeSet::from(["approver".to_owned()])
    );
    assert_eq!(
        store.role_grant("g-1").await.unwrap().unwrap().state,
        "approved"
    );
}

async fn a_code_is_redeemed_once_and_a_replay_revokes_what_it_issued(store: Store) {
    let code = CodeRecord {
        client_id: "c".into(),
        user_id: "u".into(),
        redirect_uri: "https://a.example/cb".into(),
        code_challenge: "x".repeat(43),
        scope: "payments:read".into(),
        audience: "payments".into(),
        acr: "pwd".into(),
        auth_time: 1,
        expires_at: 100,
    };
    store.insert_code(b"hash", &code).await.unwrap();
    let (a, b) = tokio::join!(store.redeem_code(b"hash", 5), store.redeem_code(b"hash", 5));
    let fresh = [&a, &b]
        .iter()
        .filter(|r| matches!(r, Ok(Redeem::Fresh(_))))
        .count();
    assert_eq!(fresh, 1, "{a:?} {b:?}");
    store
        .create_family(&family("f-1", "c"), b"rt")
        .await
        .unwrap();
    store
        .note_code_exchange(b"hash", "jti-1", Some("f-1"))
        .await
        .unwrap();
    let Redeem::Replayed { revocations } = store.redeem_code(b"hash", 6).await.unwrap() else {
        panic!("a replay must be reported");
    };
    let targets: BTreeSet<_> = revocations
        .iter()
        .map(|r| (r.token_id.clone(), r.family_id.clone()))
        .collect();
    assert!(targets.contains(&(Some("jti-1".into()), None)));
    assert!(targets.contains(&(None, Some("f-1".into()))));
    assert!(matches!(
        store.redeem_code(b"nope", 6).await.unwrap(),
        Redeem::Unknown
    ));
}

async fn concurrent_refreshes_rotate_exactly_once(store: Store) {
    store
        .create_family(&family("f-1", "c"), b"rt-0")
        .await
        .unwrap();
    let (a, b, c) = tokio::join!(
        store.rotate_refresh(b"rt-0", "c", b"rt-a", 200),
        store.rotate_refresh(b"rt-0", "c", b"rt-b", 200),
        store.rotate_refresh(b"rt-0", "c", b"rt-c", 200),
    );
    let outcomes = [a.unwrap(), b.unwrap(), c.unwrap()];
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| matches!(o, Spend::Rotated(_)))
            .count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| matches!(o, Spend::Reused { .. }))
            .count(),
        2
    );
    // The family is revoked by the reuse: even the winner's child is refused.
    for child in [b"rt-a", b"rt-b", b"rt-c"] {
        let outcome = store
            .rotate_refresh(child, "c", b"rt-z", 201)
            .await
            .unwrap();
        assert!(
            matches!(outcome, Spend::Unknown | Spend::Refused(_)),
            "{outcome:?}"
        );
    }
    let family = store.family_of_token(b"rt-0").await.unwrap().unwrap();
    assert!(family.revoked_at.is_some());
}

async fn refresh_by_another_client_changes_nothing(store: Store) {
    store
        .create_family(&family("f-1", "c"), b"rt-0")
        .await
        .unwrap();
    let outcome = store
        .rotate_refresh(b"rt-0", "other", b"rt-1", 200)
        .await
        .unwrap();
    assert!(matches!(outcome, Spend::Refused(_)));
    let outcome = store
        .rotate_refresh(b"rt-0", "c", b"rt-1", 200)
        .await
        .unwrap();
    assert!(
        matches!(outcome, Spend::Rotated(_)),
        "the token must still be live: {outcome:?}"
    );
}

async fn revocations_are_numbered_and_replayed_in_order(store: Store) {
    store
        .create_family(&family("f-1", "c"), b"rt-0")
        .await
        .unwrap();
    let first = store
        .revoke_token("jti-1", 500, "revoked_by_client", 100)
        .await
        .unwrap();
    let second = store
        .revoke_family("f-1", "revoked_by_client", 101)
        .await
        .unwrap()
        .unwrap();
    assert!(
        store
            .revoke_family("f-1", "again", 102)
            .await
            .unwrap()
            .is_none(),
        "revoked once only"
    );
    assert!(second.seq > first.seq);
    let all = store.revocations_after(0, 100, 10).await.unwrap();
    assert_eq!(all, vec![first.clone(), second.clone()]);
    assert_eq!(
        store.revocations_after(first.seq, 100, 10).await.unwrap(),
        vec![second.clone()]
    );
    // Expired revocations no longer matter and are not replayed.
    assert_eq!(
        store.revocations_after(0, 600, 10).await.unwrap(),
        vec![second]
    );
    assert!(store.is_revoked("jti-1", None).await.unwrap());
    assert!(store.is_revoked("other", Some("f-1")).await.unwrap());
    assert!(!store.is_revoked("other", None).await.unwrap());
}

async fn a_new_key_retires_the_current_one(store: Store) {
    let rng = ring::rand::SystemRandom::new();
    let first = crate::keys::generate(&rng, crate::keys::KeyAlgorithm::EdDSA, 0, 0).unwrap();
    store.add_key(&first, 0).await.unwrap();
    let second = crate::keys::generate(&rng, crate::keys::KeyAlgorithm::ES256, 100, 160).unwrap();
    store.add_key(&second, 360).await.unwrap();
    let keys = store.keys().await.unwrap();
    assert_eq!(keys.len(), 2);
    let old = keys.iter().find(|k| k.kid == first.kid).unwrap();
    assert_eq!((old.retires_at, old.unpublished_at), (Some(160), Some(520)));
    let new = keys.iter().find(|k| k.kid == second.kid).unwrap();
    assert_eq!((new.retires_at, new.unpublished_at), (None, None));
    assert_eq!(new.private_pkcs8, second.private_pkcs8);
}
