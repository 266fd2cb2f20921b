//! Static separation of duties, both ways: no subject is given two roles of one conflict, and
//! no token carries scopes that span a conflict, however the subject came by them.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use tonic::Code;
use trias_issuer::Error;
use trias_proto::v1::{
    ApproveRoleGrantRequest, Decision, EventKind, ListRoleGrantsRequest, ListUsersRequest,
    RequestRoleGrantRequest, RoleGrantState,
};
use trias_tests::{
    Backend, IssuerHandle, IssuerOptions, client_credentials, refused, start_issuer, with_bearer,
};

const MAKER_CHECKER: &str = "payments maker-checker";

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
        justification: String::new(),
    };
    with_bearer(request, token)
}

both_backends!(conflicting_roles_are_refused_locally);
async fn conflicting_roles_are_refused_locally(backend: Backend) {
    let Some(issuer) = start_issuer(IssuerOptions::on(backend)).await else {
        return;
    };
    let (carol, _) = issuer
        .user("carol", "carol's password", &["clerk"], false)
        .await;
    for role in ["approver", "treasurer"] {
        let refusal = issuer.issuer.assign_role_locally(&carol, role).await;
        let Err(Error::AccessDenied(message)) = refusal else {
            panic!("{role} should be refused: {refusal:?}");
        };
        assert!(
            message.contains(MAKER_CHECKER) && message.contains("clerk"),
            "{message}"
        );
    }
    // Roles outside the conflict are fine.
    issuer
        .issuer
        .assign_role_locally(&carol, "security-analyst")
        .await
        .unwrap();
    let held = issuer.issuer.store().roles_of(&carol).await.unwrap();
    assert_eq!(
        held.into_iter().collect::<Vec<_>>(),
        ["clerk", "security-analyst"]
    );
    let granted: Vec<_> = issuer
        .events_of(EventKind::RoleGrantApproved)
        .await
        .into_iter()
        .filter(|e| e.subject == carol)
        .map(|e| e.attributes["role"].clone())
        .collect();
    assert_eq!(granted, ["clerk", "security-analyst"]);
    issuer.stop().await;
}

both_backends!(conflicting_roles_are_refused_through_the_admin_api);
async fn conflicting_roles_are_refused_through_the_admin_api(backend: Backend) {
    let Some(issuer) = start_issuer(IssuerOptions::on(backend)).await else {
        return;
    };
    let (alice, bob) = (issuer.admin("alice").await, issuer.admin("bob").await);
    let scopes = "admin:roles admin:users";
    let alice_token = issuer.admin_token(&alice, scopes).await;
    let bob_token = issuer.admin_token(&bob, scopes).await;
    let (carol, _) = issuer
        .user("carol", "carol's password", &["clerk"], false)
        .await;
    let (dan, _) = issuer.user("dan", "dan's password", &[], false).await;
    let mut grpc = issuer.grpc().await;

    // Refused at the request: carol already holds clerk. Nothing is written.
    let request = grpc
        .request_role_grant(grant_request(&carol, "approver", &alice_token))
        .await;
    let status = refused(request, Code::PermissionDenied, "access_denied");
    assert!(status.message().contains(MAKER_CHECKER), "{status:?}");
    let grants = grpc
        .list_role_grants(with_bearer(ListRoleGrantsRequest::default(), &alice_token))
        .await
        .unwrap()
        .into_inner()
        .grants;
    assert!(grants.is_empty());

    // Refused at the approval: two requests were fine alone, the second is not once the
    // first is approved.
    let mut pending = Vec::new();
    for role in ["clerk", "approver"] {
        let grant = grpc
            .request_role_grant(grant_request(&dan, role, &alice_token))
            .await
            .unwrap()
            .into_inner();
        pending.push(grant.id);
    }
    let approve = |id: &str| with_bearer(ApproveRoleGrantRequest { id: id.into() }, &bob_token);
    grpc.approve_role_grant(approve(&pending[0])).await.unwrap();
    let second = grpc.approve_role_grant(approve(&pending[1])).await;
    let status = refused(second, Code::PermissionDenied, "access_denied");
    assert!(status.message().contains(MAKER_CHECKER), "{status:?}");
    assert_eq!(roles_of(&issuer, &bob_token, &dan).await, ["clerk"]);
    assert_eq!(roles_of(&issuer, &bob_token, &carol).await, ["clerk"]);
    let still_pending = grpc
        .list_role_grants(with_bearer(
            ListRoleGrantsRequest {
                state: RoleGrantState::Pending as i32,
            },
            &bob_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .grants;
    assert!(
        still_pending.is_empty(),
        "a refused grant cannot be approved later"
    );

    let refusals = issuer.events_of(EventKind::RoleGrantRefused).await;
    assert_eq!(refusals.len(), 2);
    assert!(refusals.iter().all(|e| e.decision() == Decision::Deny
        && e.reason == "access_denied"
        && e.attributes["detail"].contains(MAKER_CHECKER)));
    assert_eq!(refusals[0].subject, carol);
    assert_eq!(refusals[0].attributes["role"], "approver");
    assert_eq!(refusals[1].attributes["grant_id"], pending[1]);
    assert_eq!(refusals[1].attributes["approver"], bob.user_id);
    issuer.stop().await;
}

/// Roles that do not conflict with each other, whose scopes together do the work of two roles
/// that do: `requester` and `releaser` may be held together, but a token carrying both their
/// scopes would combine maker and checker.
const ORDERS_POLICY: &str = r#"
default_audience = "orders"

[roles]
requester = ["orders:create"]
releaser  = ["orders:release"]
maker     = ["orders:create", "orders:read"]
checker   = ["orders:release", "orders:read"]

[[conflict]]
name  = "orders maker-checker"
roles = ["maker", "checker"]

[[audience]]
id      = "orders"
actions = { "order.create" = "orders:create", "order.release" = "orders:release", "order.read" = "orders:read" }
"#;

both_backends!(token_scopes_spanning_a_conflict_are_refused);
async fn token_scopes_spanning_a_conflict_are_refused(backend: Backend) {
    let options = IssuerOptions {
        policy: ORDERS_POLICY.into(),
        ..IssuerOptions::on(backend)
    };
    let Some(issuer) = start_issuer(options).await else {
        return;
    };
    let (id, secret) = issuer
        .service_client(
            &["requester", "releaser"],
            &["orders:create", "orders:release"],
        )
        .await;
    let mut grpc = issuer.grpc().await;
    for scope in ["orders:create orders:release", ""] {
        let status = refused(
            grpc.token(client_credentials(&id, &secret, scope)).await,
            Code::InvalidArgument,
            "invalid_scope",
        );
        assert!(
            status.message().contains("orders maker-checker"),
            "{status:?}"
        );
    }
    // Each duty alone is fine.
    for scope in ["orders:create", "orders:release"] {
        let token = grpc
            .token(client_credentials(&id, &secret, scope))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(token.scope, scope);
    }

    let refusals = issuer.events_of(EventKind::TokenRefused).await;
    assert_eq!(refusals.len(), 2);
    for refusal in &refusals {
        assert_eq!(refusal.client_id, id);
        assert_eq!(refusal.decision(), Decision::Deny);
        assert_eq!(refusal.reason, "invalid_scope");
        assert!(refusal.attributes["detail"].contains("orders maker-checker"));
    }
    assert_eq!(issuer.events_of(EventKind::TokenIssued).await.len(), 2);
    issuer.stop().await;
}
