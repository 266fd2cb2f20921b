//! The admin API: who may call it (admin tokens from the stronger flow, with the call's scope)
//! and the two-person rule for role grants.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use tonic::Code;
use trias_proto::v1::{
    ApproveRoleGrantRequest, Decision, EventKind, ListUsersRequest, RequestRoleGrantRequest,
    RevokeRequest, RoleGrantState, TokenRequest,
};
use trias_tests::{
    Backend, IssuerHandle, IssuerOptions, assert_no_bearer_values, client_credentials, oauth_error,
    refused, start_issuer, with_bearer,
};

/// The roles ListUsers reports for a user.
async fn roles_of(issuer: &IssuerHandle, token: &str, user_id: &str) -> Vec<String> {
    let mut grpc = issuer.grpc().await;
    let users = grpc
        .list_users(with_bearer(ListUsersRequest {}, token))
        .await
        .unwrap()
        .into_inner()
        .users;
    users
        .into_iter()
        .find(|u| u.user_id == user_id)
        .unwrap()
        .roles
}

fn grant_request(
    subject: &str,
    role: &str,
    token: &str,
) -> tonic::Request<RequestRoleGrantRequest> {
    let request = RequestRoleGrantRequest {
        subject: subject.into(),
        role: role.into(),
        justification: "ticket 42".into(),
    };
    with_bearer(request, token)
}

fn approval(id: &str, token: &str) -> tonic::Request<ApproveRoleGrantRequest> {
    with_bearer(ApproveRoleGrantRequest { id: id.into() }, token)
}

both_backends!(the_admin_api_demands_an_admin_token);
async fn the_admin_api_demands_an_admin_token(backend: Backend) {
    let Some(issuer) = start_issuer(IssuerOptions::on(backend)).await else {
        return;
    };
    let admin = issuer.admin("root").await;
    let (service, secret) = issuer.service_client(&["clerk"], &["payments:read"]).await;
    let mut grpc = issuer.grpc().await;
    let service_token = grpc
        .token(client_credentials(&service, &secret, ""))
        .await
        .unwrap()
        .into_inner()
        .access_token;
    let keys_only = issuer.admin_token(&admin, "admin:keys").await;
    let users = issuer.admin_token(&admin, "admin:users").await;

    let anonymous = grpc.list_users(ListUsersRequest {}).await;
    refused(anonymous, Code::Unauthenticated, "invalid_token");
    let garbage = grpc
        .list_users(with_bearer(ListUsersRequest {}, "garbage"))
        .await;
    refused(garbage, Code::Unauthenticated, "invalid_token");
    // A valid token, but for the payments audience, not the admin API.
    let wrong_audience = grpc
        .list_users(with_bearer(ListUsersRequest {}, &service_token))
        .await;
    refused(wrong_audience, Code::Unauthenticated, "invalid_token");
    let wrong_scope = grpc
        .list_users(with_bearer(ListUsersRequest {}, &keys_only))
        .await;
    refused(wrong_scope, Code::PermissionDenied, "insufficient_scope");
    grpc.list_users(with_bearer(ListUsersRequest {}, &users))
        .await
        .unwrap();

    // A revoked admin token stops working at once; an expired one too.
    grpc.revoke(RevokeRequest {
        token: keys_only.clone(),
        client_id: admin.frontend.client_id.clone(),
        client_secret: admin.frontend.secret.clone().unwrap(),
        ..Default::default()
    })
    .await
    .unwrap();
    let revoked = grpc
        .list_keys(with_bearer(Default::default(), &keys_only))
        .await;
    refused(revoked, Code::Unauthenticated, "invalid_token");
    // Past its expiry and the validator's clock skew (5 s).
    issuer.advance(306);
    let expired = grpc
        .list_users(with_bearer(ListUsersRequest {}, &users))
        .await;
    refused(expired, Code::Unauthenticated, "invalid_token");

    let denied = issuer.events_of(EventKind::AdminDenied).await;
    let summary: Vec<_> = denied
        .iter()
        .map(|e| {
            (
                e.reason.as_str(),
                e.action.as_str(),
                e.attributes["required_scope"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("invalid_token", "list_users", "admin:users"),
            ("invalid_token", "list_users", "admin:users"),
            ("invalid_token", "list_users", "admin:users"),
            ("insufficient_scope", "list_users", "admin:users"),
            ("invalid_token", "list_keys", "admin:keys"),
            ("invalid_token", "list_users", "admin:users"),
        ]
    );
    assert!(denied.iter().all(|e| e.decision() == Decision::Deny));
    // The validator decided every presented token (the anonymous call had none), asked by
    // the issuer's own identity.
    let checks = issuer.admin_validator().unwrap().check_events().await;
    let mut reasons: Vec<&str> = checks.iter().map(|c| c.reason.as_str()).collect();
    // The revoked token: the issuer refuses it at once from its own revocations; the
    // validator hears of the revocation within a second, so it may still have allowed it.
    assert!(["revoked", ""].contains(&reasons[4]), "{reasons:?}");
    reasons[4] = "revoked";
    assert_eq!(
        reasons,
        [
            "malformed",
            "wrong_audience",
            "insufficient_scope",
            "",
            "revoked",
            "expired"
        ]
    );
    assert!(
        checks
            .iter()
            .all(|c| c.audience == "issuer-admin"
                && c.attributes["caller"] == "spiffe://trias/issuer")
    );
    assert_no_bearer_values(
        &issuer.events().await,
        &[&service_token, &keys_only, &users, &secret, &admin.password],
    );
    issuer.stop().await;
}

both_backends!(a_client_credentials_token_never_carries_an_admin_scope);
/// Admin scopes come only from a login with a second factor: a service client holding the
/// admin role is refused them (and the refusal recorded), so no machine credential alone
/// can reach the admin API.
async fn a_client_credentials_token_never_carries_an_admin_scope(backend: Backend) {
    let Some(issuer) = start_issuer(IssuerOptions::on(backend)).await else {
        return;
    };
    let (id, secret) = issuer
        .service_client(&["admin"], &["admin:users", "admin:roles"])
        .await;
    let request = TokenRequest {
        resource: "issuer-admin".into(),
        ..client_credentials(&id, &secret, "admin:users")
    };
    let status = refused(
        issuer.grpc().await.token(request).await,
        Code::InvalidArgument,
        "invalid_scope",
    );
    assert!(
        status.message().contains("authorization_code"),
        "{status:?}"
    );
    let refusals = issuer.events_of(EventKind::TokenRefused).await;
    assert_eq!(refusals.len(), 1);
    assert_eq!(refusals[0].client_id, id);
    assert!(issuer.events_of(EventKind::TokenIssued).await.is_empty());
    issuer.stop().await;
}

both_backends!(an_admin_token_without_a_second_factor_is_refused);
/// Defence in depth: under a policy that (by mistake) lets admin scopes come from a password
/// login alone, such a token passes the validator, but the issuer still refuses it for lack
/// of `acr` `mfa`, and records the refusal.
async fn an_admin_token_without_a_second_factor_is_refused(backend: Backend) {
    let lax = trias_policy::SAMPLE.replace("min_acr     = \"mfa\"\n", "");
    assert_ne!(
        lax,
        trias_policy::SAMPLE,
        "the sample policy asks admin scopes for mfa"
    );
    let Some(issuer) = start_issuer(IssuerOptions {
        policy: lax,
        ..IssuerOptions::on(backend)
    })
    .await
    else {
        return;
    };
    let admin = issuer.admin("root").await;
    let mut grpc = issuer.grpc().await;
    let (login, verifier) = admin
        .frontend
        .login(&admin.username, &admin.password, "admin:users");
    let login = trias_proto::v1::LoginRequest {
        resource: "issuer-admin".into(),
        ..login
    };
    let outcome = grpc.login(login).await.unwrap().into_inner();
    assert_ne!(outcome.acr, "mfa");
    let token = grpc
        .token(admin.frontend.exchange(&outcome.code, &verifier))
        .await
        .unwrap()
        .into_inner()
        .access_token;
    let status = refused(
        grpc.list_users(with_bearer(ListUsersRequest {}, &token))
            .await,
        Code::PermissionDenied,
        "insufficient_scope",
    );
    assert!(status.message().contains("acr mfa"), "{status:?}");
    let denied = issuer.events_of(EventKind::AdminDenied).await;
    assert_eq!(denied.len(), 1);
    assert!(denied[0].attributes["detail"].contains("second factor"));
    issuer.stop().await;
}

both_backends!(bootstrap_makes_two_administrators_once);
/// `trias-issuer bootstrap`: two different administrators, TOTP enrolled, holding the admin
/// role; a second bootstrap is refused, since the admin API's two-person grants take over.
async fn bootstrap_makes_two_administrators_once(backend: Backend) {
    let Some(issuer) = start_issuer(IssuerOptions::on(backend)).await else {
        return;
    };
    let same = issuer.issuer.bootstrap(["ann", "ann"], "admin").await;
    assert!(
        matches!(same, Err(trias_issuer::Error::InvalidRequest(_))),
        "{same:?}"
    );
    let admins = issuer
        .issuer
        .bootstrap(["ann", "ben"], "admin")
        .await
        .unwrap();
    for admin in &admins {
        assert!(admin.user.totp_secret.is_some());
        assert!(admin.password.len() >= 32);
        let roles = issuer
            .issuer
            .store()
            .roles_of(&admin.user.user.user_id)
            .await
            .unwrap();
        assert_eq!(roles.into_iter().collect::<Vec<_>>(), ["admin"]);
    }
    let again = issuer.issuer.bootstrap(["cat", "dan"], "admin").await;
    assert!(
        matches!(again, Err(trias_issuer::Error::AlreadyExists(_))),
        "{again:?}"
    );
    let created = issuer.events_of(EventKind::UserCreated).await;
    assert_eq!(
        created.len(),
        2,
        "nothing is left of the refused bootstraps"
    );
    assert_no_bearer_values(
        &issuer.events().await,
        &[&admins[0].password, &admins[1].password],
    );
    issuer.stop().await;
}

both_backends!(without_a_validator_the_admin_api_is_off);
/// The issuer validates no token for its own admin API: with no validator to ask, every
/// admin call is refused (and the refusal recorded), even with a good admin token.
async fn without_a_validator_the_admin_api_is_off(backend: Backend) {
    let Some(issuer) = start_issuer(IssuerOptions {
        admin_validator: false,
        ..IssuerOptions::on(backend)
    })
    .await
    else {
        return;
    };
    let admin = issuer.admin("root").await;
    let token = issuer.admin_token(&admin, "admin:users").await;
    let status = issuer
        .grpc()
        .await
        .list_users(with_bearer(ListUsersRequest {}, &token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("no validator"), "{status:?}");
    let denied = issuer.events_of(EventKind::AdminDenied).await;
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0].reason, "temporarily_unavailable");
    issuer.stop().await;
}

both_backends!(role_grants_need_a_second_administrator);
async fn role_grants_need_a_second_administrator(backend: Backend) {
    let Some(issuer) = start_issuer(IssuerOptions::on(backend)).await else {
        return;
    };
    let (alice, bob) = (issuer.admin("alice").await, issuer.admin("bob").await);
    let (carol, _) = issuer.user("carol", "carol's password", &[], false).await;
    let scopes = "admin:roles admin:users";
    let (alice_token, bob_token) = (
        issuer.admin_token(&alice, scopes).await,
        issuer.admin_token(&bob, scopes).await,
    );
    let mut grpc = issuer.grpc().await;

    let grant = grpc
        .request_role_grant(grant_request(&carol, "clerk", &alice_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(grant.state(), RoleGrantState::Pending);
    assert_eq!(grant.requested_by, alice.user_id);
    assert!(roles_of(&issuer, &alice_token, &carol).await.is_empty());

    let own = grpc
        .approve_role_grant(approval(&grant.id, &alice_token))
        .await;
    refused(own, Code::PermissionDenied, "access_denied");
    let for_herself = grpc
        .request_role_grant(grant_request(&alice.user_id, "clerk", &bob_token))
        .await;
    assert!(for_herself.is_ok(), "another administrator may ask for her");
    let self_request = grpc
        .request_role_grant(grant_request(&alice.user_id, "clerk", &alice_token))
        .await;
    refused(self_request, Code::PermissionDenied, "access_denied");

    let approved = grpc
        .approve_role_grant(approval(&grant.id, &bob_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(approved.state(), RoleGrantState::Approved);
    assert_eq!(approved.approved_by, bob.user_id);
    assert_eq!(roles_of(&issuer, &bob_token, &carol).await, ["clerk"]);
    let again = grpc
        .approve_role_grant(approval(&grant.id, &bob_token))
        .await;
    refused(again, Code::PermissionDenied, "access_denied");

    let events: Vec<_> = issuer
        .events()
        .await
        .into_iter()
        .filter(|e| e.attributes.get("grant_id") == Some(&grant.id))
        .collect();
    let kinds: Vec<_> = events
        .iter()
        .map(|e| (e.kind(), e.reason.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            (EventKind::RoleGrantRequested, ""),
            (EventKind::RoleGrantRefused, "access_denied"),
            (EventKind::RoleGrantApproved, ""),
            (EventKind::RoleGrantRefused, "access_denied"),
        ]
    );
    assert_eq!(events[0].subject, carol);
    assert_eq!(events[0].attributes["requested_by"], alice.user_id);
    assert_eq!(events[1].attributes["approver"], alice.user_id);
    assert_eq!(events[2].subject, carol);
    assert_eq!(events[2].attributes["approved_by"], bob.user_id);
    let self_refusal = issuer
        .events_of(EventKind::RoleGrantRefused)
        .await
        .into_iter()
        .find(|e| e.subject == alice.user_id)
        .unwrap();
    assert_eq!(self_refusal.attributes["requested_by"], alice.user_id);
    assert_eq!(self_refusal.reason, "access_denied");
    issuer.stop().await;
}

both_backends!(a_role_grant_request_expires);
/// A request not approved within `role_grant_ttl` (24 h) can no longer be approved, and the
/// late approval is recorded as refused.
async fn a_role_grant_request_expires(backend: Backend) {
    let Some(issuer) = start_issuer(IssuerOptions::on(backend)).await else {
        return;
    };
    let (alice, bob) = (issuer.admin("alice").await, issuer.admin("bob").await);
    let (carol, _) = issuer.user("carol", "carol's password", &[], false).await;
    let scopes = "admin:roles admin:users";
    let alice_token = issuer.admin_token(&alice, scopes).await;
    let mut grpc = issuer.grpc().await;
    let grant = grpc
        .request_role_grant(grant_request(&carol, "clerk", &alice_token))
        .await
        .unwrap()
        .into_inner();
    issuer.advance(24 * 3600 + 1);
    let bob_token = issuer.admin_token(&bob, scopes).await;
    let late = grpc
        .approve_role_grant(approval(&grant.id, &bob_token))
        .await
        .unwrap_err();
    assert!(late.message().contains("expired"), "{late:?}");
    assert!(roles_of(&issuer, &bob_token, &carol).await.is_empty());
    let refused: Vec<_> = issuer
        .events_of(EventKind::RoleGrantRefused)
        .await
        .into_iter()
        .filter(|e| e.attributes.get("grant_id") == Some(&grant.id))
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    issuer.stop().await;
}

both_backends!(concurrent_approvals_have_one_winner);
async fn concurrent_approvals_have_one_winner(backend: Backend) {
    let Some(issuer) = start_issuer(IssuerOptions::on(backend)).await else {
        return;
    };
    let requester = issuer.admin("alice").await;
    let approvers = [issuer.admin("bob").await, issuer.admin("dave").await];
    let (carol, _) = issuer.user("carol", "carol's password", &[], false).await;
    let token = issuer
        .admin_token(&requester, "admin:roles admin:users")
        .await;
    let mut grpc = issuer.grpc().await;
    let grant = grpc
        .request_role_grant(grant_request(&carol, "approver", &token))
        .await
        .unwrap()
        .into_inner();

    // Everything each approval needs first, then all of them released at once: minting a
    // token between spawns would space the approvals out and let the race slip by.
    let mut ready = Vec::new();
    for approver in approvers.iter().chain(approvers.iter()) {
        let approver_token = issuer.admin_token(approver, "admin:roles").await;
        ready.push((issuer.grpc().await, approval(&grant.id, &approver_token)));
    }
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(ready.len()));
    let mut tasks = Vec::new();
    for (mut grpc, request) in ready {
        let start = std::sync::Arc::clone(&start);
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            grpc.approve_role_grant(request).await
        }));
    }
    let mut winners = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => winners += 1,
            Err(status) => assert_eq!(oauth_error(&status).as_deref(), Some("access_denied")),
        }
    }
    assert_eq!(winners, 1);
    assert_eq!(roles_of(&issuer, &token, &carol).await, ["approver"]);
    let approvals = issuer
        .events_of(EventKind::RoleGrantApproved)
        .await
        .into_iter()
        .filter(|e| e.subject == carol)
        .count();
    assert_eq!(approvals, 1);
    issuer.stop().await;
}
