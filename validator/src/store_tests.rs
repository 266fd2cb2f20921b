//! The ledger contract, run against both backends: SQLite always, PostgreSQL when
//! `TRIAS_TEST_POSTGRES_URL` names a server (each test creates its own database there).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use crate::store::{Recorded, Store};

/// A store on the named backend, or `None` (skipped, with a message) for PostgreSQL when no
/// server is configured.
async fn open(backend: &str) -> Option<(Store, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let url = match backend {
        "sqlite" => format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("validator.db").display()
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
    a_subject_holds_one_listed_action_per_object,
    other_subjects_and_objects_are_independent,
    concurrent_conflicting_attempts_cannot_both_pass,
    concurrent_repeats_of_one_action_all_pass,
);

async fn a_subject_holds_one_listed_action_per_object(store: Store) {
    let record = |subject: &'static str, action: &'static str| {
        let store = store.clone();
        async move {
            store
                .record("payments", "payment/7", subject, action, "jti", 100)
                .await
                .unwrap()
        }
    };
    assert_eq!(record("alice", "payment.create").await, Recorded::First);
    assert_eq!(record("alice", "payment.create").await, Recorded::Again);
    assert_eq!(
        record("alice", "payment.approve").await,
        Recorded::Conflict {
            earlier_action: "payment.create".into()
        }
    );
    assert_eq!(record("bob", "payment.approve").await, Recorded::First);
    assert_eq!(
        record("bob", "payment.execute").await,
        Recorded::Conflict {
            earlier_action: "payment.approve".into()
        }
    );
    assert_eq!(
        store.object_history("payments", "payment/7").await.unwrap(),
        vec![
            ("alice".to_owned(), "payment.create".to_owned()),
            ("bob".to_owned(), "payment.approve".to_owned()),
        ]
    );
}

async fn other_subjects_and_objects_are_independent(store: Store) {
    let r = store
        .record("payments", "payment/1", "alice", "payment.create", "j1", 1)
        .await
        .unwrap();
    assert_eq!(r, Recorded::First);
    for (rule, object) in [("payments", "payment/2"), ("other", "payment/1")] {
        let r = store
            .record(rule, object, "alice", "payment.approve", "j2", 2)
            .await
            .unwrap();
        assert_eq!(r, Recorded::First, "{rule} {object}");
    }
    assert_eq!(
        store
            .action_of("payments", "payment/1", "alice")
            .await
            .unwrap()
            .as_deref(),
        Some("payment.create")
    );
    assert_eq!(
        store
            .action_of("payments", "payment/1", "bob")
            .await
            .unwrap(),
        None
    );
}

async fn concurrent_conflicting_attempts_cannot_both_pass(store: Store) {
    for round in 0..20 {
        let object = format!("payment/{round}");
        let mut tasks = tokio::task::JoinSet::new();
        for action in ["payment.approve", "payment.execute", "payment.create"] {
            let store = store.clone();
            let object = object.clone();
            tasks.spawn(async move {
                store
                    .record("payments", &object, "mallory", action, "j", 1)
                    .await
                    .unwrap()
            });
        }
        let mut passed = 0;
        while let Some(outcome) = tasks.join_next().await {
            if outcome.unwrap() == Recorded::First {
                passed += 1;
            }
        }
        assert_eq!(passed, 1, "round {round}: exactly one attempt wins");
        let history = store.object_history("payments", &object).await.unwrap();
        assert_eq!(history.len(), 1);
    }
}

async fn concurrent_repeats_of_one_action_all_pass(store: Store) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let store = store.clone();
        tasks.spawn(async move {
            store
                .record("payments", "payment/9", "carol", "payment.execute", "j", 1)
                .await
                .unwrap()
        });
    }
    let mut first = 0;
    while let Some(outcome) = tasks.join_next().await {
        match outcome.unwrap() {
            Recorded::First => first += 1,
            Recorded::Again => {}
            other => panic!("a repeat of one action is not a conflict: {other:?}"),
        }
    }
    assert_eq!(first, 1);
}
