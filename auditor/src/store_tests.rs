//! The log's storage and sequencer contract, run against both backends: SQLite always,
//! PostgreSQL when `TRIAS_TEST_POSTGRES_URL` names a server (each test creates its own
//! database there).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::sync::Arc;

use prost::Message as _;
use trias_proto::v1::{AuditEvent, Decision, EventKind};
use trias_runtime::clock::{Clock, ManualClock, timestamp};
use trias_runtime::testing::PostgresDb;

use crate::auditor::{Auditor, MAX_EVENT_BYTES};
use crate::checkpoint::SigningKey;
use crate::error::Error;
use crate::merkle::{self, Frontier, leaf_hash};
use crate::sequencer::{RestoreError, Sequencer};
use crate::store::{Batch, Entry, Filter, Order, Store, StoredCheckpoint};

const ORIGIN: &str = "test.local/audit";

/// What a test's store lives in: a temporary directory, and for PostgreSQL a database that
/// is dropped once the test has passed.
struct Place {
    _dir: tempfile::TempDir,
    database: Option<PostgresDb>,
}

impl Place {
    async fn clean_up(self, store: Store) {
        store.close().await;
        if let Some(db) = self.database {
            db.drop_database().await;
        }
    }
}

/// A store on the named backend, or `None` (skipped, with a message) for PostgreSQL when no
/// server is configured.
async fn open(backend: &str) -> Option<(Store, Place)> {
    let dir = tempfile::tempdir().unwrap();
    let (url, database) = match backend {
        "sqlite" => (
            format!(
                "sqlite://{}?mode=rwc",
                dir.path().join("auditor.db").display()
            ),
            None,
        ),
        _ => {
            let db = trias_runtime::testing::fresh_postgres().await?;
            (db.url.clone(), Some(db))
        }
    };
    let store = Store::open(&url).await.unwrap();
    Some((
        store,
        Place {
            _dir: dir,
            database,
        },
    ))
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some((store, place)) = super::open("sqlite").await {
                    super::$name(store.clone()).await;
                    place.clean_up(store).await;
                }
            })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some((store, place)) = super::open("postgres").await {
                    super::$name(store.clone()).await;
                    place.clean_up(store).await;
                }
            })*
        }
    };
}

both_backends!(
    a_batch_is_stored_and_read_back,
    a_batch_larger_than_one_statement_is_stored_whole,
    update_and_delete_are_refused_by_the_database,
    a_batch_repeating_a_stored_event_fails_whole,
    appends_are_idempotent_by_event_id,
    a_reused_id_with_other_content_is_refused,
    proofs_from_stored_nodes_verify,
    restart_restores_the_tree_and_refuses_another_key,
    queries_filter_order_and_page,
    time_range_queries_page_in_time_order,
    concurrent_appends_share_commits,
    a_retry_racing_its_first_commit_gets_the_same_index,
    invalid_batches_append_nothing,
);

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::at_unix(1_700_000_000))
}

fn key() -> Arc<SigningKey> {
    Arc::new(SigningKey::from_pkcs8(ORIGIN, &SigningKey::generate_pkcs8().unwrap()).unwrap())
}

fn event(id: &str, producer: &str, seq: u64, subject: &str) -> AuditEvent {
    AuditEvent {
        id: id.into(),
        producer: producer.into(),
        producer_seq: seq,
        time: Some(timestamp(clock().now())),
        kind: EventKind::TokenIssued as i32,
        subject: subject.into(),
        client_id: "web".into(),
        decision: Decision::Allow as i32,
        ..Default::default()
    }
}

async fn auditor(store: Store, key: Arc<SigningKey>) -> Auditor {
    let verifier = key.verifier();
    let sequencer = Sequencer::start(store.clone(), key, clock()).await.unwrap();
    Auditor::new(
        store,
        sequencer,
        verifier,
        ["issuer".to_owned(), "validator".to_owned()],
    )
}

/// A batch of `n` entries starting at an empty tree, with its nodes and checkpoint.
fn batch(n: u64, key: &SigningKey) -> Batch {
    let mut frontier = Frontier::new();
    let mut entries = Vec::new();
    let mut nodes = Vec::new();
    for i in 0..n {
        let e = event(&format!("e{i}"), "issuer", i + 1, "alice");
        let leaf = e.encode_to_vec();
        nodes.extend(frontier.push(leaf_hash(&leaf)));
        entries.push(Entry::new(i, &e, leaf));
    }
    let body = crate::checkpoint::CheckpointBody {
        origin: ORIGIN.into(),
        tree_size: n,
        root: frontier.root(),
    };
    Batch {
        entries,
        nodes,
        checkpoint: StoredCheckpoint {
            tree_size: n,
            root: body.root,
            note: key.sign(&body),
            time: 1,
        },
        producers: vec![("issuer".into(), n)],
        state: Vec::new(),
    }
}

async fn a_batch_is_stored_and_read_back(store: Store) {
    let key = key();
    let batch = batch(5, &key);
    store.append(&batch).await.unwrap();
    assert_eq!(store.entry_count().await.unwrap(), 5);
    assert_eq!(
        store.last_checkpoint().await.unwrap(),
        Some(batch.checkpoint.clone())
    );
    let range = store.range(1, 3).await.unwrap();
    assert_eq!(
        range,
        vec![
            (1, batch.entries[1].leaf.clone()),
            (2, batch.entries[2].leaf.clone())
        ]
    );
    let wanted: Vec<_> = batch.nodes.iter().map(|(id, _)| *id).collect();
    let nodes = store.nodes(&wanted).await.unwrap();
    assert_eq!(nodes.len(), batch.nodes.len());
    for (id, hash) in &batch.nodes {
        assert_eq!(nodes[id], *hash);
    }
    let logged = store.logged(&["e3", "missing"]).await.unwrap();
    assert_eq!(logged.len(), 1);
    assert_eq!(logged["e3"], (3, batch.entries[3].leaf.clone()));
    assert_eq!(store.producer_last_seq("issuer").await.unwrap(), Some(5));
    assert_eq!(store.producer_last_seq("validator").await.unwrap(), None);
}

/// A batch larger than one multi-row statement on either backend (2,048 entries and 8,192
/// nodes per statement on PostgreSQL, fewer on SQLite), and lookups larger than one `IN`
/// list: every row is written once and every id is found.
async fn a_batch_larger_than_one_statement_is_stored_whole(store: Store) {
    let key = key();
    let batch = batch(5000, &key);
    assert!(batch.nodes.len() > 4 * 2048, "{} nodes", batch.nodes.len());
    store.append(&batch).await.unwrap();
    assert_eq!(store.entry_count().await.unwrap(), 5000);
    let ids: Vec<String> = (0..5000).map(|i| format!("e{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let logged = store.logged(&ids).await.unwrap();
    assert_eq!(logged.len(), 5000);
    for entry in &batch.entries {
        assert_eq!(logged[&entry.event_id], (entry.index, entry.leaf.clone()));
    }
    let wanted: Vec<_> = batch.nodes.iter().map(|(id, _)| *id).collect();
    let nodes = store.nodes(&wanted).await.unwrap();
    assert_eq!(nodes.len(), batch.nodes.len());
    assert_eq!(
        store.last_checkpoint().await.unwrap(),
        Some(batch.checkpoint)
    );
}

async fn update_and_delete_are_refused_by_the_database(store: Store) {
    let key = key();
    let batch = batch(3, &key);
    store.append(&batch).await.unwrap();
    for statement in [
        "UPDATE entries SET subject = 'mallory'",
        "UPDATE entries SET leaf = leaf || leaf WHERE idx = 1",
        "DELETE FROM entries WHERE idx = 2",
        "DELETE FROM entries",
        "UPDATE nodes SET hash = hash || hash",
        "DELETE FROM nodes",
        "UPDATE checkpoints SET note = 'forged'",
        "DELETE FROM checkpoints",
    ] {
        let error = sqlx::query(statement)
            .execute(store.pool())
            .await
            .expect_err(statement);
        assert!(
            error.to_string().contains("append-only"),
            "{statement}: {error}"
        );
    }
    assert_eq!(store.entry_count().await.unwrap(), 3);
    assert_eq!(store.range(0, 3).await.unwrap().len(), 3);
    assert_eq!(
        store.last_checkpoint().await.unwrap(),
        Some(batch.checkpoint)
    );
    let subjects: Vec<String> = sqlx::query_scalar("SELECT subject FROM entries ORDER BY idx")
        .fetch_all(store.pool())
        .await
        .unwrap();
    assert_eq!(subjects, ["alice", "alice", "alice"]);
}

async fn a_batch_repeating_a_stored_event_fails_whole(store: Store) {
    let key = key();
    let first = batch(2, &key);
    store.append(&first).await.unwrap();
    // A second batch whose first entry reuses a stored event id (at a new index).
    let mut second = batch(4, &key);
    second.entries.drain(..1);
    second.entries[0].event_id = "e0".into();
    second
        .nodes
        .retain(|(id, _)| id.level == 0 && id.index >= 2);
    assert!(store.append(&second).await.is_err());
    assert_eq!(store.entry_count().await.unwrap(), 2);
    assert_eq!(
        store.last_checkpoint().await.unwrap(),
        Some(first.checkpoint)
    );
}

async fn appends_are_idempotent_by_event_id(store: Store) {
    let auditor = auditor(store, key()).await;
    assert_eq!(auditor.checkpoint().tree_size, 0, "a new log starts empty");
    let events: Vec<_> = (1..=3)
        .map(|i| event(&format!("id{i}"), "issuer", i, "alice"))
        .collect();
    let first = auditor.append("issuer", events.clone()).await.unwrap();
    assert_eq!(first.indexes, [0, 1, 2]);
    assert_eq!(first.checkpoint.tree_size, 3);
    let commits = auditor.sequencer().commits();

    let again = auditor.append("issuer", events.clone()).await.unwrap();
    assert_eq!(again.indexes, [0, 1, 2]);
    assert_eq!(again.checkpoint.tree_size, 3);
    assert_eq!(
        auditor.sequencer().commits(),
        commits,
        "nothing new, no commit"
    );

    // A retry mixed with new events, and an id repeated within the batch.
    let mut mixed = vec![event("id4", "issuer", 4, "bob"), events[1].clone()];
    mixed.push(mixed[0].clone());
    let mixed = auditor.append("issuer", mixed).await.unwrap();
    assert_eq!(mixed.indexes, [3, 1, 3]);
    assert_eq!(mixed.checkpoint.tree_size, 4);
    assert_eq!(auditor.store().entry_count().await.unwrap(), 4);
    assert_eq!(
        auditor.store().producer_last_seq("issuer").await.unwrap(),
        Some(4)
    );
    let body = auditor.verifier().verify(&mixed.checkpoint.note).unwrap();
    assert_eq!(body.tree_size, 4);
    assert_eq!(body.root, mixed.checkpoint.root);
}

async fn a_reused_id_with_other_content_is_refused(store: Store) {
    let auditor = auditor(store, key()).await;
    auditor
        .append("issuer", vec![event("x", "issuer", 1, "alice")])
        .await
        .unwrap();
    let forged = event("x", "issuer", 1, "mallory");
    let error = auditor
        .append("issuer", vec![event("y", "issuer", 2, "bob"), forged])
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::InvalidArgument(ref m) if m.contains("\"x\"")),
        "{error}"
    );
    // Within one batch too.
    let error = auditor
        .append(
            "issuer",
            vec![
                event("z", "issuer", 3, "carol"),
                event("z", "issuer", 3, "dave"),
            ],
        )
        .await
        .unwrap_err();
    assert!(matches!(error, Error::InvalidArgument(_)), "{error}");
    assert_eq!(auditor.store().entry_count().await.unwrap(), 1);
    assert_eq!(auditor.checkpoint().tree_size, 1);
}

async fn proofs_from_stored_nodes_verify(store: Store) {
    let auditor = auditor(store, key()).await;
    let mut checkpoints = Vec::new();
    let mut leaves = Vec::new();
    for round in 0..7u64 {
        let events: Vec<_> = (0..=round)
            .map(|i| {
                // Numbered without gaps, so the gap detector adds no alerts to the tree.
                let seq = round * (round + 1) / 2 + i + 1;
                event(&format!("r{round}-{i}"), "validator", seq, "s")
            })
            .collect();
        leaves.extend(events.iter().map(|e| e.encode_to_vec()));
        checkpoints.push(
            auditor
                .append("validator", events)
                .await
                .unwrap()
                .checkpoint,
        );
    }
    let last = checkpoints.last().unwrap().clone();
    assert_eq!(last.tree_size, leaves.len() as u64);
    assert_eq!(
        merkle::root_of_entries(leaves.iter().map(Vec::as_slice)),
        last.root
    );
    for checkpoint in &checkpoints {
        for index in 0..checkpoint.tree_size {
            let (size, leaf, proof) = auditor
                .inclusion_proof(index, checkpoint.tree_size)
                .await
                .unwrap();
            assert_eq!(size, checkpoint.tree_size);
            assert_eq!(leaf, leaf_hash(&leaves[index as usize]));
            merkle::verify_inclusion(index, size, &leaf, &proof, &checkpoint.root).unwrap();
        }
        let (to, proof) = auditor
            .consistency_proof(checkpoint.tree_size, 0)
            .await
            .unwrap();
        assert_eq!(to, last.tree_size);
        merkle::verify_consistency(
            checkpoint.tree_size,
            to,
            &proof,
            &checkpoint.root,
            &last.root,
        )
        .unwrap();
    }
    for (index, size) in [(0, last.tree_size + 1), (last.tree_size, last.tree_size)] {
        let error = auditor.inclusion_proof(index, size).await.unwrap_err();
        assert!(matches!(error, Error::InvalidArgument(_)), "{error}");
    }
    for (from, to) in [(0, 3), (5, 3), (1, last.tree_size + 1)] {
        let error = auditor.consistency_proof(from, to).await.unwrap_err();
        assert!(
            matches!(error, Error::InvalidArgument(_)),
            "{from}..{to}: {error}"
        );
    }
}

async fn restart_restores_the_tree_and_refuses_another_key(store: Store) {
    let key = key();
    let auditor = auditor(store.clone(), Arc::clone(&key)).await;
    let events: Vec<_> = (1..=5)
        .map(|i| event(&format!("id{i}"), "issuer", i, "alice"))
        .collect();
    let before = auditor.append("issuer", events).await.unwrap().checkpoint;
    auditor.sequencer().close().await;

    let again = crate::sequencer::Sequencer::start(store.clone(), Arc::clone(&key), clock())
        .await
        .unwrap();
    assert_eq!(*again.latest(), *before);
    let reopened = Auditor::new(store.clone(), again, key.verifier(), ["issuer".to_owned()]);
    let next = reopened
        .append("issuer", vec![event("id6", "issuer", 6, "bob")])
        .await
        .unwrap();
    assert_eq!(next.indexes, [5]);
    let (_, proof) = reopened.consistency_proof(5, 6).await.unwrap();
    merkle::verify_consistency(5, 6, &proof, &before.root, &next.checkpoint.root).unwrap();
    reopened.sequencer().close().await;

    let error = Sequencer::start(store, self::key(), clock())
        .await
        .unwrap_err();
    assert!(matches!(error, RestoreError::Integrity(_)), "{error}");
}

async fn queries_filter_order_and_page(store: Store) {
    let auditor = auditor(store, key()).await;
    let mut events = Vec::new();
    for i in 0..30u64 {
        let mut e = event(
            &format!("q{i}"),
            "validator",
            i + 1,
            ["alice", "bob", "carol"][(i % 3) as usize],
        );
        e.kind = if i % 2 == 0 {
            EventKind::Check
        } else {
            EventKind::TokenIssued
        } as i32;
        e.audience = "payments".into();
        e.action = if i % 5 == 0 {
            "payment.approve"
        } else {
            "payment.create"
        }
        .into();
        e.resource = format!("payment/{}", i % 4);
        e.time = Some(prost_types::Timestamp {
            seconds: 1_700_000_000 + i as i64,
            nanos: 0,
        });
        events.push(e);
    }
    auditor.append("validator", events).await.unwrap();
    let all = |filter: Filter, order: Order| {
        let auditor = auditor.clone();
        async move {
            let mut indexes = Vec::new();
            let mut after = None;
            loop {
                let page = auditor.query_page(&filter, order, after, 4).await.unwrap();
                assert!(page.entries.len() <= 4);
                indexes.extend(page.entries.iter().map(|e| e.index));
                match page.next {
                    Some(next) => after = Some(next),
                    None => return indexes,
                }
            }
        }
    };
    let bob = Filter {
        subject: Some("bob".into()),
        ..Filter::default()
    };
    let oldest: Vec<u64> = (0..30).filter(|i| i % 3 == 1).collect();
    assert_eq!(all(bob.clone(), Order::OldestFirst).await, oldest);
    let newest: Vec<u64> = oldest.iter().rev().copied().collect();
    assert_eq!(all(bob, Order::NewestFirst).await, newest);

    let approvals_of_checks = Filter {
        audience: Some("payments".into()),
        action: Some("payment.approve".into()),
        kinds: vec![EventKind::Check as i32],
        ..Filter::default()
    };
    assert_eq!(
        all(approvals_of_checks, Order::OldestFirst).await,
        [0, 10, 20]
    );
    let window = Filter {
        resource: Some("payment/1".into()),
        time_from: Some(1_700_000_005 * 1_000_000_000),
        time_to: Some(1_700_000_021 * 1_000_000_000),
        ..Filter::default()
    };
    assert_eq!(all(window, Order::OldestFirst).await, [5, 9, 13, 17]);
    let page = auditor
        .query_page(&Filter::default(), Order::NewestFirst, None, 3)
        .await
        .unwrap();
    let first = page.entries[0].clone();
    assert_eq!(first.index, 29);
    assert_eq!(first.event.unwrap().id, "q29");
    assert_eq!(page.next, Some(crate::auditor::Cursor::Index(27)));
    let none = Filter {
        subject: Some("nobody".into()),
        ..Filter::default()
    };
    assert!(all(none, Order::NewestFirst).await.is_empty());
}

/// A time range alone pages in event-time order, though the events arrived out of it (a
/// producer's late backlog): every match once, in order, across pages, both ways.
async fn time_range_queries_page_in_time_order(store: Store) {
    use crate::auditor::Cursor;
    let auditor = auditor(store, key()).await;
    // Logged in this order; times: 10, 30, 20, 40, ... (each odd entry is 20 s late).
    let times: Vec<i64> = (0..24i64)
        .map(|i| 1_700_000_000 + if i % 2 == 0 { 10 * i } else { 10 * i - 20 })
        .collect();
    let events: Vec<AuditEvent> = times
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut e = event(&format!("t{i}"), "validator", i as u64 + 1, "alice");
            e.kind = if i % 3 == 0 {
                EventKind::Check
            } else {
                EventKind::TokenIssued
            } as i32;
            e.time = Some(prost_types::Timestamp {
                seconds: *t,
                nanos: 0,
            });
            e
        })
        .collect();
    auditor.append("validator", events).await.unwrap();
    let nanos = |s: i64| s * 1_000_000_000;
    let window = Filter {
        time_from: Some(nanos(1_700_000_020)),
        time_to: Some(nanos(1_700_000_200)),
        ..Filter::default()
    };
    assert!(window.by_time());
    let all = |filter: Filter, order: Order| {
        let auditor = auditor.clone();
        async move {
            let mut seen = Vec::new();
            let mut after = None;
            loop {
                let page = auditor.query_page(&filter, order, after, 5).await.unwrap();
                seen.extend(page.entries.iter().map(|e| {
                    let time = e.event.as_ref().unwrap().time.unwrap().seconds;
                    (time, e.index)
                }));
                match page.next {
                    Some(next @ Cursor::Time { .. }) => after = Some(next),
                    Some(other) => panic!("a time-ordered page continues by time: {other:?}"),
                    None => return seen,
                }
            }
        }
    };
    let mut expected: Vec<(i64, u64)> = times
        .iter()
        .enumerate()
        .filter(|(_, t)| (1_700_000_020..1_700_000_200).contains(*t))
        .map(|(i, t)| (*t, i as u64))
        .collect();
    expected.sort();
    assert_eq!(all(window.clone(), Order::OldestFirst).await, expected);
    expected.reverse();
    assert_eq!(all(window.clone(), Order::NewestFirst).await, expected);
    // A kind narrows a time range and keeps its order.
    let checks = Filter {
        kinds: vec![EventKind::Check as i32],
        ..window.clone()
    };
    let got = all(checks, Order::NewestFirst).await;
    assert!(got.windows(2).all(|w| w[0] > w[1]), "{got:?}");
    assert!(got.iter().all(|(_, i)| i % 3 == 0) && !got.is_empty());
    // A finer filter pages in log order, and a cursor of the other kind is refused.
    let alice = Filter {
        subject: Some("alice".into()),
        ..window.clone()
    };
    assert!(!alice.by_time());
    let error = auditor
        .query_page(
            &alice,
            Order::NewestFirst,
            Some(Cursor::Time { time: 0, index: 3 }),
            5,
        )
        .await
        .unwrap_err();
    assert!(error.to_string().contains("page_token"), "{error}");
    let error = auditor
        .query_page(&window, Order::NewestFirst, Some(Cursor::Index(3)), 5)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("page_token"), "{error}");
}

async fn concurrent_appends_share_commits(store: Store) {
    let auditor = auditor(store, key()).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200u64 {
        let auditor = auditor.clone();
        tasks.spawn(async move {
            // Concurrent appends from one producer arrive in any order, which a shipper
            // never does; one sequence number for all keeps the gap detector quiet.
            let e = event(&format!("c{i}"), "issuer", 1, "alice");
            auditor.append("issuer", vec![e]).await.unwrap()
        });
    }
    let mut indexes = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let appended = done.unwrap();
        assert!(appended.checkpoint.tree_size > appended.indexes[0]);
        indexes.extend(appended.indexes);
    }
    indexes.sort_unstable();
    assert_eq!(indexes, (0..200).collect::<Vec<_>>());
    assert!(
        auditor.sequencer().commits() < 200,
        "{} commits",
        auditor.sequencer().commits()
    );
    assert_eq!(auditor.checkpoint().tree_size, 200);
}

/// The sequencer prepares a group while the previous one commits: an event whose first copy
/// is in that transaction must be recognised from the group in flight, not only from the
/// database, or it would be logged twice (and the commit refused by the unique index).
async fn a_retry_racing_its_first_commit_gets_the_same_index(store: Store) {
    let auditor = auditor(store, key()).await;
    const EVENTS: u64 = 300;
    const ROUNDS: u64 = 3;
    for round in 0..ROUNDS {
        let mut tasks = tokio::task::JoinSet::new();
        // Each event twice, the copies far apart in arrival order, so that they fall into
        // different groups, one of them committing while the other is prepared.
        let order = (0..EVENTS).chain((0..EVENTS).rev());
        for i in order {
            let auditor = auditor.clone();
            tasks.spawn(async move {
                let e = event(&format!("r{round}-{i}"), "issuer", 1, "alice");
                let appended = auditor.append("issuer", vec![e]).await.unwrap();
                (i, appended.indexes[0], appended.checkpoint.tree_size)
            });
        }
        let mut seen = std::collections::HashMap::new();
        while let Some(done) = tasks.join_next().await {
            let (i, index, size) = done.unwrap();
            assert!(size > index, "answered before its checkpoint covered it");
            if let Some(first) = seen.insert(i, index) {
                assert_eq!(first, index, "event r{round}-{i} got two indexes");
            }
        }
        assert_eq!(seen.len() as u64, EVENTS);
    }
    assert_eq!(auditor.checkpoint().tree_size, EVENTS * ROUNDS);
    assert_eq!(
        auditor.store().entry_count().await.unwrap(),
        EVENTS * ROUNDS
    );
    assert!(
        auditor.sequencer().commits() > ROUNDS,
        "one commit a round would not race: {}",
        auditor.sequencer().commits()
    );
}

async fn invalid_batches_append_nothing(store: Store) {
    let auditor = auditor(store, key()).await;
    let ok = || event("fine", "issuer", 1, "alice");
    let mut big = event("big", "issuer", 2, "alice");
    big.attributes
        .insert("padding".into(), "x".repeat(MAX_EVENT_BYTES));
    let mut nameless = event("", "issuer", 3, "alice");
    nameless.id.clear();
    let mut timeless = event("timeless", "issuer", 4, "alice");
    timeless.time = None;
    let cases: Vec<(&str, Vec<AuditEvent>, &str)> = vec![
        ("issuer", vec![ok(), big], "bytes"),
        (
            "issuer",
            vec![ok(), event("v", "validator", 1, "a")],
            "producer",
        ),
        ("issuer", vec![ok(), nameless], "no id"),
        (
            "issuer",
            vec![ok(), event(&"i".repeat(129), "issuer", 5, "a")],
            "longer",
        ),
        ("issuer", vec![ok(), timeless], "no time"),
        (
            "issuer",
            (0..1001)
                .map(|i| event(&format!("n{i}"), "issuer", i, "a"))
                .collect(),
            "at most",
        ),
        ("issuer", Vec::new(), "at least one"),
        ("", vec![ok()], "producer is required"),
    ];
    for (producer, events, says) in cases {
        let error = auditor.append(producer, events).await.unwrap_err();
        assert!(
            matches!(error, Error::InvalidArgument(ref m) if m.contains(says)),
            "{says}: {error}"
        );
    }
    let mut stranger = ok();
    stranger.producer = "mallory".into();
    let error = auditor.append("mallory", vec![stranger]).await.unwrap_err();
    assert!(matches!(error, Error::PermissionDenied(_)), "{error}");
    assert_eq!(auditor.store().entry_count().await.unwrap(), 0);
    assert_eq!(auditor.checkpoint().tree_size, 0);
}

/// Every PostgreSQL connection of the log's pool plans each statement with its own values: a
/// generic plan made while the log was nearly empty would scan the whole entries table for
/// every event-id lookup as the log grows (see `Store::open`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_never_keep_a_generic_plan() {
    let Some((store, place)) = open("postgres").await else {
        return;
    };
    // Hold several connections at once, so that the pool has to open new ones.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut conn = store.pool().acquire().await.unwrap();
        let mode: String = sqlx::query_scalar("SELECT current_setting('plan_cache_mode')")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(mode, "force_custom_plan");
        held.push(conn);
    }
    drop(held);
    place.clean_up(store).await;
}

/// On PostgreSQL the log is append-only twice over: the triggers refuse UPDATE, DELETE and
/// TRUNCATE for everyone, and a service role holding only the grants docs/configuration.md
/// lists can run the auditor — append, restore, query — but can neither change a row nor
/// remove the guard, because it owns neither the tables nor the triggers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_grants_leave_the_service_role_only_appending() {
    let Some((owner, place)) = open("postgres").await else {
        return;
    };
    let url = place.database.as_ref().unwrap().url.clone();
    let (server, database) = url.rsplit_once('/').unwrap();
    let role = format!("{database}_service");
    for statement in [
        format!("CREATE ROLE {role} LOGIN"),
        format!("GRANT CONNECT ON DATABASE {database} TO {role}"),
        format!("GRANT USAGE ON SCHEMA public TO {role}"),
        format!("GRANT SELECT, INSERT ON entries, nodes, checkpoints TO {role}"),
        format!("GRANT SELECT, INSERT, UPDATE ON producers, detector_state TO {role}"),
        format!("GRANT SELECT ON _sqlx_migrations TO {role}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(owner.pool())
            .await
            .unwrap();
    }
    let (scheme, rest) = server.split_once("://").unwrap();
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let service_url = format!("{scheme}://{role}@{host}/{database}");

    // The service role runs the auditor: it opens the migrated log, appends and restarts.
    let key = key();
    let running = auditor(Store::open(&service_url).await.unwrap(), Arc::clone(&key)).await;
    let events: Vec<_> = (1..=4)
        .map(|i| event(&format!("g{i}"), "issuer", i, "alice"))
        .collect();
    running.append("issuer", events).await.unwrap();
    running.close().await;
    let restarted = auditor(Store::open(&service_url).await.unwrap(), Arc::clone(&key)).await;
    assert_eq!(restarted.checkpoint().tree_size, 4);
    restarted.close().await;

    let service = Store::open(&service_url).await.unwrap();
    for statement in [
        "UPDATE entries SET subject = 'mallory'",
        "DELETE FROM entries",
        "TRUNCATE entries",
        "UPDATE nodes SET hash = hash || hash",
        "DELETE FROM checkpoints",
        "DROP TRIGGER entries_append_only ON entries",
        "ALTER TABLE entries DISABLE TRIGGER ALL",
        "DROP TABLE checkpoints",
    ] {
        let error = sqlx::query(statement)
            .execute(service.pool())
            .await
            .expect_err(statement)
            .to_string();
        assert!(
            error.contains("permission denied") || error.contains("must be owner"),
            "{statement}: {error}"
        );
    }
    assert_eq!(owner.entry_count().await.unwrap(), 4);
    service.close().await;

    for statement in [format!("DROP OWNED BY {role}"), format!("DROP ROLE {role}")] {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(owner.pool())
            .await
            .unwrap();
    }
    place.clean_up(owner).await;
}
