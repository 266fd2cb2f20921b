//! The auditor end to end, over gRPC: appends and their receipts, idempotent retries,
//! inclusion and consistency proofs checked against signed checkpoints with the verifier key,
//! queries, refused batches that add nothing, a restart on the same data, and a row tampered
//! behind the auditor's back caught by re-deriving the root from an export.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use tonic::Code;
use trias_auditor::auditor::leaf;
use trias_auditor::merkle::{leaf_hash, root_of_entries, verify_consistency, verify_inclusion};
use trias_proto::v1::{
    AppendRequest, AppendResponse, AuditEvent, EventKind, ExportRequest, GetCheckpointRequest,
    GetConsistencyProofRequest, GetInclusionProofRequest, Order, QueryRequest, TimeRange,
};
use trias_runtime::clock::Clock as _;
use trias_tests::Backend;
use trias_tests::auditor::{AuditorHandle, AuditorOptions, start_auditor, verified};

both_backends!(
    append_returns_receipts_and_a_retry_adds_nothing,
    every_receipt_is_proven_in_its_checkpoint,
    queries_filter_order_and_page,
    refused_batches_append_nothing,
    a_producer_appends_only_as_itself,
    security_team_calls_need_an_audit_read_token,
    a_restarted_auditor_keeps_a_verifiable_log,
    a_tampered_row_is_caught_by_an_export,
);

async fn append(
    auditor: &AuditorHandle,
    producer: &str,
    events: Vec<AuditEvent>,
) -> Result<AppendResponse, tonic::Status> {
    // Each producer appends as its own identity; an unknown one as the issuer.
    let identity = if ["issuer", "validator"].contains(&producer) {
        producer
    } else {
        "issuer"
    };
    auditor
        .grpc_as(identity)
        .await
        .append(AppendRequest {
            producer: producer.into(),
            events,
        })
        .await
        .map(tonic::Response::into_inner)
}

fn events(auditor: &AuditorHandle, producer: &str, seqs: std::ops::Range<u64>) -> Vec<AuditEvent> {
    seqs.map(|seq| auditor.event(producer, seq, "alice"))
        .collect()
}

async fn size(auditor: &AuditorHandle) -> u64 {
    auditor
        .grpc()
        .await
        .get_checkpoint(GetCheckpointRequest {})
        .await
        .unwrap()
        .into_inner()
        .tree_size
}

/// Under mTLS a producer's name is bound to its identity: the validator (or an impostor with
/// a certificate from the same CA) cannot append as the issuer. The refusal is itself logged,
/// as an `access_refused` alert naming the caller.
async fn a_producer_appends_only_as_itself(backend: Backend) {
    let Some(auditor) = start_auditor(AuditorOptions::on(backend)).await else {
        return;
    };
    for (identity, producer) in [
        ("impostor", "issuer"),
        ("validator", "issuer"),
        ("issuer", "validator"),
    ] {
        let status = auditor
            .grpc_as(identity)
            .await
            .append(AppendRequest {
                producer: producer.into(),
                events: events(&auditor, producer, 1..2),
            })
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{identity}: {status:?}"
        );
        assert_eq!(
            trias_tests::oauth_error(&status).as_deref(),
            Some("access_denied")
        );
    }
    let alerts = auditor
        .query(QueryRequest {
            kinds: vec![EventKind::Alert as i32],
            order: Order::OldestFirst as i32,
            ..Default::default()
        })
        .await;
    let refused: Vec<(String, String)> = alerts
        .iter()
        .map(|entry| {
            let event = entry.event.as_ref().unwrap();
            assert_eq!(event.reason, "access_refused");
            (event.attributes["caller"].clone(), event.action.clone())
        })
        .collect();
    assert_eq!(
        refused,
        [
            ("spiffe://trias/impostor".to_owned(), "Append".to_owned()),
            ("spiffe://trias/validator".to_owned(), "Append".to_owned()),
            ("spiffe://trias/issuer".to_owned(), "Append".to_owned()),
        ]
    );
    // Nothing but the alerts was logged, and the issuer appends as itself.
    assert_eq!(size(&auditor).await, 3);
    append(&auditor, "issuer", events(&auditor, "issuer", 1..2))
        .await
        .unwrap();
    auditor.stop().await;
}

/// Query, proofs and export need a bearer token that the validator says allows
/// `audit.query` at the auditor; the latest checkpoint is public. Every refusal is logged
/// as an `access_refused` alert naming the caller and why.
async fn security_team_calls_need_an_audit_read_token(backend: Backend) {
    let Some(auditor) = start_auditor(AuditorOptions::on(backend)).await else {
        return;
    };
    append(&auditor, "issuer", events(&auditor, "issuer", 1..3))
        .await
        .unwrap();
    let mut anonymous = auditor.grpc_with("cli", None).await;
    let checkpoint = anonymous
        .get_checkpoint(GetCheckpointRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(checkpoint.tree_size, 2);

    let status = anonymous.query(QueryRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let status = anonymous
        .export(ExportRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let status = anonymous
        .get_consistency_proof(GetConsistencyProofRequest {
            from_size: 1,
            to_size: 2,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // A clerk's token is a good token, but not for the auditor and without audit:read.
    let clerk = auditor
        .access()
        .issuer
        .token_for(&["clerk"], "payments:read", "")
        .await;
    let status = auditor
        .grpc_with("cli", Some(&clerk))
        .await
        .query(QueryRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("wrong_audience"), "{status:?}");

    // The analyst's token is let in, and sees the four refusals.
    let alerts = auditor
        .query(QueryRequest {
            kinds: vec![EventKind::Alert as i32],
            order: Order::OldestFirst as i32,
            ..Default::default()
        })
        .await;
    // (the call refused, and whether it was for a token meant for another audience)
    let refused: Vec<(String, bool)> = alerts
        .iter()
        .map(|entry| {
            let event = entry.event.as_ref().unwrap();
            assert_eq!(event.reason, "access_refused");
            assert_eq!(event.attributes["caller"], "spiffe://trias/cli");
            let why = &event.attributes["why"];
            (event.action.clone(), why.contains("wrong_audience"))
        })
        .collect();
    assert_eq!(
        refused,
        [
            ("Query".to_owned(), false),
            ("Export".to_owned(), false),
            ("GetConsistencyProof".to_owned(), false),
            ("Query".to_owned(), true),
        ]
    );
    auditor.stop().await;
}

async fn append_returns_receipts_and_a_retry_adds_nothing(backend: Backend) {
    let Some(auditor) = start_auditor(AuditorOptions::on(backend)).await else {
        return;
    };
    let verifier = auditor.verifier();
    let batch = events(&auditor, "issuer", 1..6);
    let first = append(&auditor, "issuer", batch.clone()).await.unwrap();
    let ids: Vec<&str> = first.receipts.iter().map(|r| r.event_id.as_str()).collect();
    let sent: Vec<&str> = batch.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, sent);
    let indexes: Vec<u64> = first.receipts.iter().map(|r| r.index).collect();
    assert_eq!(indexes, [0, 1, 2, 3, 4]);
    let checkpoint = first.checkpoint.clone().unwrap();
    assert_eq!(verified(&verifier, &checkpoint).tree_size, 5);

    // The shipper's retry after a lost acknowledgement: same indexes, nothing added.
    let retry = append(&auditor, "issuer", batch.clone()).await.unwrap();
    assert_eq!(retry.receipts, first.receipts);
    assert_eq!(retry.checkpoint.unwrap().tree_size, 5);
    assert_eq!(size(&auditor).await, 5);

    // Another producer's batch lands after, with its own checkpoint.
    let more = append(&auditor, "validator", events(&auditor, "validator", 1..3))
        .await
        .unwrap();
    let indexes: Vec<u64> = more.receipts.iter().map(|r| r.index).collect();
    assert_eq!(indexes, [5, 6]);
    assert_eq!(verified(&verifier, &more.checkpoint.unwrap()).tree_size, 7);
    auditor.stop().await;
}

async fn every_receipt_is_proven_in_its_checkpoint(backend: Backend) {
    let Some(auditor) = start_auditor(AuditorOptions::on(backend)).await else {
        return;
    };
    let verifier = auditor.verifier();
    let mut grpc = auditor.grpc().await;
    let mut checkpoints = Vec::new();
    for round in 0..4u64 {
        let batch = events(&auditor, "issuer", round * 10..round * 10 + round + 3);
        let response = append(&auditor, "issuer", batch.clone()).await.unwrap();
        let checkpoint = response.checkpoint.unwrap();
        let body = verified(&verifier, &checkpoint);
        for (receipt, event) in response.receipts.iter().zip(&batch) {
            let proof = grpc
                .get_inclusion_proof(GetInclusionProofRequest {
                    index: receipt.index,
                    tree_size: checkpoint.tree_size,
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(proof.leaf_hash, leaf_hash(&leaf(event)));
            verify_inclusion(
                receipt.index,
                proof.tree_size,
                &proof.leaf_hash,
                &proof.hashes,
                &body.root,
            )
            .unwrap();
            // The proof holds for this event only.
            let other = leaf_hash(b"an event that was never appended");
            assert!(
                verify_inclusion(
                    receipt.index,
                    proof.tree_size,
                    &other,
                    &proof.hashes,
                    &body.root
                )
                .is_err()
            );
        }
        checkpoints.push(checkpoint);
    }
    for (older, newer) in checkpoints.iter().zip(checkpoints.iter().skip(1)) {
        let proof = grpc
            .get_consistency_proof(GetConsistencyProofRequest {
                from_size: older.tree_size,
                to_size: newer.tree_size,
            })
            .await
            .unwrap()
            .into_inner();
        verify_consistency(
            older.tree_size,
            newer.tree_size,
            &proof.hashes,
            &older.root_hash,
            &newer.root_hash,
        )
        .unwrap();
    }
    // Ranges the log does not have are refused.
    let last = checkpoints.last().unwrap().tree_size;
    let status = grpc
        .get_inclusion_proof(GetInclusionProofRequest {
            index: 0,
            tree_size: last + 1,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let status = grpc
        .get_inclusion_proof(GetInclusionProofRequest {
            index: last,
            tree_size: last,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    for (from_size, to_size) in [(3, 2), (0, 2), (1, last + 1)] {
        let status = grpc
            .get_consistency_proof(GetConsistencyProofRequest { from_size, to_size })
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{from_size}..{to_size}"
        );
    }
    let status = grpc
        .export(ExportRequest {
            from_index: 0,
            to_index: last + 1,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    auditor.stop().await;
}

async fn query_all(auditor: &AuditorHandle, request: QueryRequest) -> (Vec<u64>, usize) {
    let mut stream = auditor
        .grpc()
        .await
        .query(request)
        .await
        .unwrap()
        .into_inner();
    let (mut indexes, mut pages) = (Vec::new(), 0);
    while let Some(page) = stream.message().await.unwrap() {
        pages += 1;
        for entry in &page.entries {
            let event = entry.event.clone().unwrap();
            assert_eq!(leaf(&event), entry.leaf, "the event is its leaf");
        }
        indexes.extend(page.entries.iter().map(|e| e.index));
    }
    (indexes, pages)
}

async fn queries_filter_order_and_page(backend: Backend) {
    let Some(auditor) = start_auditor(AuditorOptions::on(backend)).await else {
        return;
    };
    let start = auditor.clock.now();
    let mut batch = Vec::new();
    for seq in 0..25u64 {
        let mut event = auditor.event("validator", seq + 1, ["alice", "bob"][(seq % 2) as usize]);
        event.kind = EventKind::Check as i32;
        event.audience = "payments".into();
        event.action = if seq % 3 == 0 {
            "payment.approve"
        } else {
            "payment.create"
        }
        .into();
        event.resource = format!("payment/{}", seq % 5);
        event.token_id = format!("jti-{}", seq % 4);
        event.time = Some(trias_runtime::clock::timestamp(
            start + std::time::Duration::from_secs(seq),
        ));
        batch.push(event);
    }
    append(&auditor, "validator", batch).await.unwrap();

    let bob = QueryRequest {
        subject: "bob".into(),
        order: Order::OldestFirst as i32,
        page_size: 4,
        ..Default::default()
    };
    let expected: Vec<u64> = (0..25).filter(|i| i % 2 == 1).collect();
    let (oldest, pages) = query_all(&auditor, bob.clone()).await;
    assert_eq!(oldest, expected);
    assert_eq!(pages, 3, "12 entries in pages of 4");
    let (newest, _) = query_all(
        &auditor,
        QueryRequest {
            order: Order::NewestFirst as i32,
            ..bob.clone()
        },
    )
    .await;
    assert_eq!(newest, expected.iter().rev().copied().collect::<Vec<_>>());

    // Resuming from a page token continues where the page ended.
    let mut stream = auditor
        .grpc()
        .await
        .query(bob.clone())
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    drop(stream);
    assert!(!first.next_page_token.is_empty());
    let (rest, _) = query_all(
        &auditor,
        QueryRequest {
            page_token: first.next_page_token,
            ..bob.clone()
        },
    )
    .await;
    assert_eq!(rest, expected[4..]);
    let (limited, _) = query_all(&auditor, QueryRequest { limit: 5, ..bob }).await;
    assert_eq!(limited, expected[..5]);

    let approvals = QueryRequest {
        audience: "payments".into(),
        action: "payment.approve".into(),
        token_id: "jti-0".into(),
        kinds: vec![EventKind::Check as i32],
        order: Order::OldestFirst as i32,
        ..Default::default()
    };
    assert_eq!(query_all(&auditor, approvals).await.0, [0, 12, 24]);
    let window = QueryRequest {
        resource: "payment/2".into(),
        time: Some(TimeRange {
            from: Some(trias_runtime::clock::timestamp(
                start + std::time::Duration::from_secs(5),
            )),
            to: Some(trias_runtime::clock::timestamp(
                start + std::time::Duration::from_secs(18),
            )),
        }),
        ..Default::default()
    };
    assert_eq!(query_all(&auditor, window).await.0, [17, 12, 7]);
    let wrong_kind = QueryRequest {
        kinds: vec![EventKind::TokenIssued as i32],
        ..Default::default()
    };
    assert!(query_all(&auditor, wrong_kind).await.0.is_empty());

    // Bad requests are refused.
    let mut grpc = auditor.grpc().await;
    let t = |s| trias_runtime::clock::timestamp(start + std::time::Duration::from_secs(s));
    for bad in [
        QueryRequest {
            time: Some(TimeRange {
                from: Some(t(9)),
                to: Some(t(3)),
            }),
            ..Default::default()
        },
        QueryRequest {
            page_size: 1001,
            ..Default::default()
        },
        QueryRequest {
            page_token: "not a token".into(),
            ..Default::default()
        },
    ] {
        let status = grpc.query(bad.clone()).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}");
    }
    auditor.stop().await;
}

async fn refused_batches_append_nothing(backend: Backend) {
    let Some(auditor) = start_auditor(AuditorOptions::on(backend)).await else {
        return;
    };
    append(&auditor, "issuer", events(&auditor, "issuer", 1..3))
        .await
        .unwrap();

    let mut oversized = auditor.event("issuer", 3, "alice");
    oversized
        .attributes
        .insert("padding".into(), "x".repeat(70 * 1024));
    let mut batch = events(&auditor, "issuer", 4..6);
    batch.push(oversized);
    let status = append(&auditor, "issuer", batch).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("bytes"), "{}", status.message());

    let mut batch = events(&auditor, "issuer", 6..8);
    batch.push(auditor.event("validator", 1, "bob"));
    let status = append(&auditor, "issuer", batch).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("producer"),
        "{}",
        status.message()
    );

    let status = append(&auditor, "mallory", events(&auditor, "mallory", 1..2))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(
        trias_tests::oauth_error(&status).as_deref(),
        Some("access_denied")
    );

    let too_many = events(&auditor, "issuer", 100..1101);
    let status = append(&auditor, "issuer", too_many).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    assert_eq!(size(&auditor).await, 2);
    assert_eq!(auditor.export().await.len(), 2);
    auditor.stop().await;
}

async fn a_restarted_auditor_keeps_a_verifiable_log(backend: Backend) {
    let Some(auditor) = start_auditor(AuditorOptions::on(backend)).await else {
        return;
    };
    let verifier = auditor.verifier();
    let batch = events(&auditor, "issuer", 1..9);
    let before = append(&auditor, "issuer", batch.clone())
        .await
        .unwrap()
        .checkpoint
        .unwrap();

    let auditor = auditor.restart().await;
    assert_eq!(auditor.verifier(), verifier, "the same checkpoint key");
    let mut grpc = auditor.grpc().await;
    let now = grpc
        .get_checkpoint(GetCheckpointRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now, before);
    // A retry from before the restart is still recognised, and appends continue.
    let retry = append(&auditor, "issuer", batch).await.unwrap();
    assert_eq!(retry.receipts.last().unwrap().index, 7);
    let after = append(&auditor, "issuer", events(&auditor, "issuer", 9..12))
        .await
        .unwrap();
    assert_eq!(after.receipts[0].index, 8);
    let after = after.checkpoint.unwrap();
    assert_eq!(verified(&verifier, &after).tree_size, 11);
    let proof = grpc
        .get_consistency_proof(GetConsistencyProofRequest {
            from_size: before.tree_size,
            to_size: after.tree_size,
        })
        .await
        .unwrap()
        .into_inner();
    verify_consistency(
        before.tree_size,
        after.tree_size,
        &proof.hashes,
        &before.root_hash,
        &after.root_hash,
    )
    .unwrap();
    let leaves: Vec<Vec<u8>> = auditor.export().await.into_iter().map(|e| e.leaf).collect();
    assert_eq!(
        root_of_entries(leaves.iter().map(Vec::as_slice)).as_slice(),
        after.root_hash.as_slice()
    );
    auditor.stop().await;
}

async fn a_tampered_row_is_caught_by_an_export(backend: Backend) {
    let Some(auditor) = start_auditor(AuditorOptions::on(backend)).await else {
        return;
    };
    let verifier = auditor.verifier();
    let checkpoint = append(&auditor, "issuer", events(&auditor, "issuer", 1..6))
        .await
        .unwrap()
        .checkpoint
        .unwrap();
    let body = verified(&verifier, &checkpoint);
    let honest = auditor.export().await;
    let leaves: Vec<&[u8]> = honest.iter().map(|e| e.leaf.as_slice()).collect();
    assert_eq!(root_of_entries(leaves), body.root);

    // Someone with the database's owner credentials drops the guard and rewrites entry 2 so
    // that it is about someone else.
    let mut forged = honest[2].event.clone().unwrap();
    forged.subject = "someone-else".into();
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&auditor.database_url())
        .await
        .unwrap();
    let refused = sqlx::query("UPDATE entries SET subject = 'someone-else' WHERE idx = 2")
        .execute(&pool)
        .await;
    assert!(refused.is_err(), "the trigger refuses the update");
    let drop_guard = match backend {
        Backend::Sqlite => "DROP TRIGGER entries_no_update",
        Backend::Postgres => "DROP TRIGGER entries_append_only ON entries",
    };
    sqlx::query(drop_guard).execute(&pool).await.unwrap();
    sqlx::query("UPDATE entries SET subject = $1, leaf = $2 WHERE idx = 2")
        .bind("someone-else")
        .bind(leaf(&forged))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    // The export now carries the forged entry; its leaves no longer lead to the signed root.
    let exported = auditor.export().await;
    assert_eq!(exported[2].event.as_ref().unwrap().subject, "someone-else");
    let leaves: Vec<Vec<u8>> = exported.into_iter().map(|e| e.leaf).collect();
    let rederived = root_of_entries(leaves.iter().map(Vec::as_slice));
    assert_ne!(rederived, body.root, "the tampering is detected");
    // And the forged entry's inclusion proof fails against the checkpoint.
    let proof = auditor
        .grpc()
        .await
        .get_inclusion_proof(GetInclusionProofRequest {
            index: 2,
            tree_size: body.tree_size,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        verify_inclusion(
            2,
            body.tree_size,
            &leaf_hash(&leaves[2]),
            &proof.hashes,
            &body.root
        )
        .is_err()
    );
    auditor.stop().await;
}
