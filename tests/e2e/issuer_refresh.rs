//! The refresh_token grant: rotation on every use, reuse detection that revokes the whole
//! family, races, scope narrowing and client binding.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use tonic::Code;
use trias_proto::v1::revocation::Target;
use trias_proto::v1::{Decision, EventKind, TokenRequest, WatchRevocationsRequest};
use trias_tests::{
    Backend, Frontend, IssuerHandle, IssuerOptions, assert_no_bearer_values, claims,
    next_revocation, oauth_error, refused, start_issuer,
};

const PASSWORD: &str = "correct horse battery";

/// An issuer, a clerk named alice, and a confidential frontend for her.
async fn setup(backend: Backend) -> Option<(IssuerHandle, Frontend)> {
    let issuer = start_issuer(IssuerOptions::on(backend)).await?;
    issuer.user("alice", PASSWORD, &["clerk"], false).await;
    let frontend = issuer
        .frontend(&["payments:read", "payments:create"], false)
        .await;
    Some((issuer, frontend))
}

both_backends!(refresh_rotates_on_every_use);
async fn refresh_rotates_on_every_use(backend: Backend) {
    let Some((issuer, frontend)) = setup(backend).await else {
        return;
    };
    let first = issuer
        .sign_in(
            &frontend,
            "alice",
            PASSWORD,
            "payments:read payments:create",
        )
        .await;
    let sid = claims(&first.access_token)["sid"].clone();
    let mut grpc = issuer.grpc().await;
    let mut current = first.refresh_token.clone();
    let mut seen = vec![first.refresh_token.clone()];
    for _ in 0..3 {
        issuer.advance(10);
        let next = grpc
            .token(frontend.refresh(&current))
            .await
            .unwrap()
            .into_inner();
        assert!(!seen.contains(&next.refresh_token), "every use rotates");
        let claims = claims(&next.access_token);
        assert_eq!(claims["sid"], sid, "rotation stays in the family");
        assert_eq!(claims["scope"], "payments:create payments:read");
        assert_eq!(claims["acr"], "pwd");
        assert_eq!(claims["iat"], issuer.now());
        seen.push(next.refresh_token.clone());
        current = next.refresh_token;
    }
    let issued = issuer.events_of(EventKind::TokenIssued).await;
    assert_eq!(issued.len(), 4);
    assert!(issued.iter().all(|e| e.family_id == sid.as_str().unwrap()));
    let grants: Vec<_> = issued
        .iter()
        .map(|e| e.attributes["grant_type"].as_str())
        .collect();
    assert_eq!(
        grants,
        [
            "authorization_code",
            "refresh_token",
            "refresh_token",
            "refresh_token"
        ]
    );
    let seen: Vec<&str> = seen.iter().map(String::as_str).collect();
    assert_no_bearer_values(&issuer.events().await, &seen);
    issuer.stop().await;
}

both_backends!(reuse_of_a_spent_token_revokes_the_family);
async fn reuse_of_a_spent_token_revokes_the_family(backend: Backend) {
    let Some((issuer, frontend)) = setup(backend).await else {
        return;
    };
    let first = issuer.sign_in(&frontend, "alice", PASSWORD, "").await;
    let sid = claims(&first.access_token)["sid"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut grpc = issuer.grpc().await;
    let second = grpc
        .token(frontend.refresh(&first.refresh_token))
        .await
        .unwrap()
        .into_inner();

    let reuse = grpc.token(frontend.refresh(&first.refresh_token)).await;
    refused(reuse, Code::PermissionDenied, "invalid_grant");
    // The thief and the victim cannot be told apart: the newest token dies too.
    let newest = grpc.token(frontend.refresh(&second.refresh_token)).await;
    refused(newest, Code::PermissionDenied, "invalid_grant");

    let mut feed = issuer
        .grpc_as("validator")
        .await
        .watch_revocations(WatchRevocationsRequest { after_seq: 0 })
        .await
        .unwrap()
        .into_inner();
    let revocation = next_revocation(&mut feed).await;
    assert_eq!(revocation.target, Some(Target::FamilyId(sid.clone())));
    assert_eq!(revocation.reason, "refresh_reuse");

    let reuse_events = issuer.events_of(EventKind::RefreshReuse).await;
    assert_eq!(reuse_events.len(), 1);
    let event = &reuse_events[0];
    assert_eq!(event.family_id, sid);
    assert_eq!(event.client_id, frontend.client_id);
    assert_eq!(event.decision(), Decision::Deny);
    assert_eq!(event.reason, "invalid_grant");
    assert_eq!(
        event.attributes["revocation_seq"],
        revocation.seq.to_string()
    );
    let refusals = issuer.events_of(EventKind::TokenRefused).await;
    assert_eq!(refusals.len(), 2);
    assert!(refusals.iter().all(|e| e.reason == "invalid_grant"));
    assert_no_bearer_values(
        &issuer.events().await,
        &[
            &first.refresh_token,
            &second.refresh_token,
            &second.access_token,
        ],
    );
    issuer.stop().await;
}

both_backends!(concurrent_refreshes_have_one_winner);
async fn concurrent_refreshes_have_one_winner(backend: Backend) {
    let Some((issuer, frontend)) = setup(backend).await else {
        return;
    };
    let first = issuer.sign_in(&frontend, "alice", PASSWORD, "").await;
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let mut grpc = issuer.grpc().await;
        let request = frontend.refresh(&first.refresh_token);
        tasks.push(tokio::spawn(async move { grpc.token(request).await }));
    }
    let mut winners = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => winners += 1,
            Err(status) => assert_eq!(oauth_error(&status).as_deref(), Some("invalid_grant")),
        }
    }
    assert_eq!(winners, 1, "exactly one use of a refresh token rotates it");
    // The losers saw reuse: one family revoked, never a second child.
    assert_eq!(issuer.events_of(EventKind::RefreshReuse).await.len(), 5);
    let issued = issuer.events_of(EventKind::TokenIssued).await;
    let refreshed = issued
        .iter()
        .filter(|e| e.attributes["grant_type"] == "refresh_token")
        .count();
    assert_eq!(refreshed, 1);
    issuer.stop().await;
}

both_backends!(refresh_may_narrow_scope_but_not_widen_it);
async fn refresh_may_narrow_scope_but_not_widen_it(backend: Backend) {
    let Some((issuer, frontend)) = setup(backend).await else {
        return;
    };
    let first = issuer
        .sign_in(&frontend, "alice", PASSWORD, "payments:create")
        .await;
    let mut grpc = issuer.grpc().await;
    let wider = TokenRequest {
        scope: "payments:create payments:read".into(),
        ..frontend.refresh(&first.refresh_token)
    };
    refused(
        grpc.token(wider).await,
        Code::InvalidArgument,
        "invalid_scope",
    );
    // A refused request spends nothing: the client's corrected retry is not reuse.
    let same = grpc
        .token(frontend.refresh(&first.refresh_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(same.scope, "payments:create");

    let second = issuer
        .sign_in(
            &frontend,
            "alice",
            PASSWORD,
            "payments:read payments:create",
        )
        .await;
    let narrower = TokenRequest {
        scope: "payments:read".into(),
        ..frontend.refresh(&second.refresh_token)
    };
    let narrowed = grpc.token(narrower).await.unwrap().into_inner();
    assert_eq!(claims(&narrowed.access_token)["scope"], "payments:read");
    // RFC 6749 §6: the original grant bounds later refreshes, not the last one.
    let restored = grpc
        .token(frontend.refresh(&narrowed.refresh_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(restored.scope, "payments:create payments:read");

    assert!(issuer.events_of(EventKind::RefreshReuse).await.is_empty());
    let refusals = issuer.events_of(EventKind::TokenRefused).await;
    assert_eq!(refusals.len(), 1);
    assert_eq!(refusals[0].reason, "invalid_scope");
    assert_eq!(refusals[0].attributes["grant_type"], "refresh_token");
    issuer.stop().await;
}

both_backends!(a_refresh_token_is_bound_to_its_client);
async fn a_refresh_token_is_bound_to_its_client(backend: Backend) {
    let Some((issuer, frontend)) = setup(backend).await else {
        return;
    };
    let other = issuer.frontend(&["payments:read"], false).await;
    let first = issuer.sign_in(&frontend, "alice", PASSWORD, "").await;
    let mut grpc = issuer.grpc().await;
    let stolen = grpc.token(other.refresh(&first.refresh_token)).await;
    refused(stolen, Code::PermissionDenied, "invalid_grant");
    // The owner's token is untouched by the other client's attempt.
    grpc.token(frontend.refresh(&first.refresh_token))
        .await
        .unwrap();

    let refusals = issuer.events_of(EventKind::TokenRefused).await;
    assert_eq!(refusals.len(), 1);
    assert_eq!(refusals[0].client_id, other.client_id);
    assert_eq!(refusals[0].reason, "invalid_grant");
    assert!(issuer.events_of(EventKind::RefreshReuse).await.is_empty());
    assert_no_bearer_values(&issuer.events().await, &[&first.refresh_token]);
    issuer.stop().await;
}
