//! RFC 7009 revocation over gRPC and HTTP, and the resumable revocation feed validators follow.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::time::Duration;

use tonic::Code;
use trias_proto::v1::revocation::Target;
use trias_proto::v1::{Decision, EventKind, RevokeRequest, WatchRevocationsRequest};
use trias_tests::{
    Backend, IssuerHandle, IssuerOptions, assert_no_bearer_values, claims, client_credentials,
    next_revocation, refused, start_issuer,
};

const PASSWORD: &str = "correct horse battery";

async fn service_token(issuer: &IssuerHandle, client: &(String, String)) -> (String, String) {
    let mut grpc = issuer.grpc().await;
    let response = grpc
        .token(client_credentials(&client.0, &client.1, ""))
        .await
        .unwrap()
        .into_inner();
    (response.access_token, response.token_id)
}

async fn revoke_over_http(issuer: &IssuerHandle, client: &(String, String), token: &str) -> u16 {
    let reply = issuer
        .post_form(
            "/oauth2/revoke",
            &[("token", token)],
            Some((&client.0, &client.1)),
        )
        .await;
    assert_eq!(reply.header("cache-control"), "no-store");
    reply.status
}

both_backends!(only_validators_follow_the_revocation_feed);
/// The feed tells which tokens are dead: a caller that is not a validator (the CLI, or an
/// impostor with a certificate from the same CA) is refused, and the refusal recorded.
async fn only_validators_follow_the_revocation_feed(backend: Backend) {
    let Some(issuer) = start_issuer(IssuerOptions::on(backend)).await else {
        return;
    };
    for impostor in ["impostor", "cli", "payments"] {
        let status = issuer
            .grpc_as(impostor)
            .await
            .watch_revocations(WatchRevocationsRequest { after_seq: 0 })
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{impostor}: {status:?}"
        );
    }
    let refusals = issuer.events_of(EventKind::AccessDenied).await;
    let callers: Vec<&str> = refusals
        .iter()
        .map(|e| e.attributes["caller"].as_str())
        .collect();
    assert_eq!(
        callers,
        [
            "spiffe://trias/impostor",
            "spiffe://trias/cli",
            "spiffe://trias/payments"
        ]
    );
    assert!(
        refusals
            .iter()
            .all(|e| e.action == "WatchRevocations" && e.decision() == Decision::Deny)
    );
    // The validator's own identity is let in.
    issuer
        .grpc_as("validator")
        .await
        .watch_revocations(WatchRevocationsRequest { after_seq: 0 })
        .await
        .unwrap();
    issuer.stop().await;
}

both_backends!(revoking_a_refresh_token_revokes_its_family);
async fn revoking_a_refresh_token_revokes_its_family(backend: Backend) {
    let Some(issuer) = start_issuer(IssuerOptions::on(backend)).await else {
        return;
    };
    issuer.user("alice", PASSWORD, &["clerk"], false).await;
    let frontend = issuer.frontend(&["payments:create"], false).await;
    let secret = frontend.secret.clone().unwrap();
    let tokens = issuer.sign_in(&frontend, "alice", PASSWORD, "").await;
    let sid = claims(&tokens.access_token)["sid"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut grpc = issuer.grpc().await;
    grpc.revoke(RevokeRequest {
        token: tokens.refresh_token.clone(),
        token_type_hint: "refresh_token".into(),
        client_id: frontend.client_id.clone(),
        client_secret: secret.clone(),
    })
    .await
    .unwrap();
    let refresh = grpc.token(frontend.refresh(&tokens.refresh_token)).await;
    refused(refresh, Code::PermissionDenied, "invalid_grant");

    let mut feed = issuer
        .grpc_as("validator")
        .await
        .watch_revocations(WatchRevocationsRequest { after_seq: 0 })
        .await
        .unwrap()
        .into_inner();
    let revocation = next_revocation(&mut feed).await;
    assert_eq!(revocation.target, Some(Target::FamilyId(sid.clone())));
    assert_eq!(revocation.reason, "revoked_by_client");

    let revoked = issuer.events_of(EventKind::TokenRevoked).await;
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].family_id, sid);
    assert_eq!(revoked[0].client_id, frontend.client_id);
    assert_eq!(revoked[0].reason, "revoked_by_client");
    assert_eq!(revoked[0].attributes["seq"], revocation.seq.to_string());
    assert_no_bearer_values(
        &issuer.events().await,
        &[&tokens.refresh_token, &tokens.access_token, &secret],
    );
    issuer.stop().await;
}

both_backends!(revoking_an_access_token_publishes_its_jti);
async fn revoking_an_access_token_publishes_its_jti(backend: Backend) {
    let Some(issuer) = start_issuer(IssuerOptions::on(backend)).await else {
        return;
    };
    let client = issuer.service_client(&["clerk"], &["payments:read"]).await;
    let (token, jti) = service_token(&issuer, &client).await;
    assert_eq!(revoke_over_http(&issuer, &client, &token).await, 200);

    let mut feed = issuer
        .grpc_as("validator")
        .await
        .watch_revocations(WatchRevocationsRequest { after_seq: 0 })
        .await
        .unwrap()
        .into_inner();
    let revocation = next_revocation(&mut feed).await;
    assert_eq!(revocation.target, Some(Target::TokenId(jti.clone())));
    // Kept only as long as the token could be used.
    assert_eq!(
        revocation.expires_at.unwrap().seconds,
        claims(&token)["exp"].as_i64().unwrap()
    );

    let revoked = issuer.events_of(EventKind::TokenRevoked).await;
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].token_id, jti);
    assert_eq!(revoked[0].client_id, client.0);
    assert_no_bearer_values(&issuer.events().await, &[&token, &client.1]);
    issuer.stop().await;
}

both_backends!(a_client_revokes_only_its_own_tokens);
async fn a_client_revokes_only_its_own_tokens(backend: Backend) {
    let Some(issuer) = start_issuer(IssuerOptions::on(backend)).await else {
        return;
    };
    let owner = issuer.service_client(&["clerk"], &["payments:read"]).await;
    let other = issuer.service_client(&["clerk"], &["payments:read"]).await;
    let (token, _) = service_token(&issuer, &owner).await;

    // RFC 7009 §2.2: an unknown token is not an error.
    for unknown in ["no-such-token", "not.a.jwt", "x"] {
        assert_eq!(revoke_over_http(&issuer, &other, unknown).await, 200);
    }
    let reply = issuer
        .post_form(
            "/oauth2/revoke",
            &[("token", &token)],
            Some((&other.0, &other.1)),
        )
        .await;
    assert_eq!((reply.status, reply.error()), (400, "unauthorized_client"));
    let mut grpc = issuer.grpc().await;
    let by_grpc = grpc
        .revoke(RevokeRequest {
            token: token.clone(),
            client_id: other.0.clone(),
            client_secret: other.1.clone(),
            ..Default::default()
        })
        .await;
    refused(by_grpc, Code::PermissionDenied, "unauthorized_client");
    let reply = issuer
        .post_form(
            "/oauth2/revoke",
            &[("token", &token)],
            Some((&owner.0, "wrong")),
        )
        .await;
    assert_eq!((reply.status, reply.error()), (401, "invalid_client"));
    assert!(reply.header("www-authenticate").starts_with("Basic"));
    let reply = issuer
        .post_form(
            "/oauth2/revoke",
            &[("token", &token), ("token_type_hint", "id_token")],
            Some((&owner.0, &owner.1)),
        )
        .await;
    assert_eq!(
        (reply.status, reply.error()),
        (400, "unsupported_token_type")
    );

    assert!(
        issuer
            .issuer
            .revocations_after(0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let refusals: Vec<_> = issuer
        .events_of(EventKind::TokenRevoked)
        .await
        .into_iter()
        .map(|e| (e.decision(), e.reason, e.client_id))
        .collect();
    let deny = |reason: &str, client: &str| (Decision::Deny, reason.to_owned(), client.to_owned());
    assert_eq!(
        refusals,
        [
            deny("unauthorized_client", &other.0),
            deny("unauthorized_client", &other.0),
            deny("invalid_client", &owner.0),
            deny("unsupported_token_type", &owner.0),
        ]
    );
    assert_no_bearer_values(&issuer.events().await, &[&token, &owner.1, &other.1]);
    issuer.stop().await;
}

both_backends!(the_revocation_feed_replays_resumes_and_follows);
async fn the_revocation_feed_replays_resumes_and_follows(backend: Backend) {
    let Some(issuer) = start_issuer(IssuerOptions::on(backend)).await else {
        return;
    };
    let client = issuer.service_client(&["clerk"], &["payments:read"]).await;
    let mut jtis = Vec::new();
    for _ in 0..3 {
        let (token, jti) = service_token(&issuer, &client).await;
        assert_eq!(revoke_over_http(&issuer, &client, &token).await, 200);
        jtis.push(jti);
    }
    let mut grpc = issuer.grpc_as("validator").await;
    let mut from_start = grpc
        .watch_revocations(WatchRevocationsRequest { after_seq: 0 })
        .await
        .unwrap()
        .into_inner();
    let mut seqs = Vec::new();
    for jti in &jtis {
        let revocation = next_revocation(&mut from_start).await;
        assert_eq!(revocation.target, Some(Target::TokenId(jti.clone())));
        seqs.push(revocation.seq);
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    // A subscriber that saw the second revocation resumes after it and gets only the third.
    let mut resumed = issuer
        .grpc_as("validator")
        .await
        .watch_revocations(WatchRevocationsRequest { after_seq: seqs[1] })
        .await
        .unwrap()
        .into_inner();
    let third = next_revocation(&mut resumed).await;
    assert_eq!(
        (third.seq, third.target),
        (seqs[2], Some(Target::TokenId(jtis[2].clone())))
    );

    // A new revocation reaches both open streams live.
    let (token, jti) = service_token(&issuer, &client).await;
    assert_eq!(revoke_over_http(&issuer, &client, &token).await, 200);
    for feed in [&mut resumed, &mut from_start] {
        let live = next_revocation(feed).await;
        assert_eq!(live.target, Some(Target::TokenId(jti.clone())));
        assert!(live.seq > seqs[2]);
    }
    assert_eq!(issuer.events_of(EventKind::TokenRevoked).await.len(), 4);
    // Open feeds do not hold up a shutdown, and their subscribers learn that it ended.
    tokio::time::timeout(Duration::from_secs(10), issuer.stop())
        .await
        .expect("the issuer stops with feeds open");
    let ended = tokio::time::timeout(Duration::from_secs(5), resumed.message()).await;
    assert!(!matches!(ended, Ok(Ok(Some(_)))), "{ended:?}");
}
